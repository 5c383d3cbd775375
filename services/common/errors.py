"""Domain errors that carry their gRPC status code, so servicers map them in one place.

Domain code raises these (or subclasses); `services.common.rpc.handle_errors` turns them into the
right status with the message. Anything else that escapes a handler is a bug and becomes INTERNAL,
never UNKNOWN.
"""
from __future__ import annotations

import grpc


class SluiceError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidArgument(SluiceError, ValueError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class ResourceExhausted(SluiceError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(SluiceError):
    code = grpc.StatusCode.UNAVAILABLE


class AlreadyExists(SluiceError):
    code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(SluiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION
