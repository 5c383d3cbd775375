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


class RemoteError(SluiceError):
    """An error another service reported as a status code and message (e.g. per request on a
    multiplexed stream); it keeps that code when this service reports it in turn."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code

    @classmethod
    def from_number(cls, number: int, message: str) -> RemoteError:
        codes = {code.value[0]: code for code in grpc.StatusCode}
        return cls(codes.get(number, grpc.StatusCode.UNKNOWN), message)
