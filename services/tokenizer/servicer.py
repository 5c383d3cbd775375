"""gRPC servicer of the public Generation API: converts protobuf and delegates to the front engine."""
from __future__ import annotations

import asyncio
import functools
import inspect
import time
import uuid

import grpc

from services.common.convert import FINISH_REASON_TO_PB, logprob_to_pb, sampling_from_pb
from services.common.errors import InvalidArgument
from services.common.pb import common_pb2, tokenizer_pb2, tokenizer_pb2_grpc
from services.common.rpc import handle_errors, time_remaining
from services.tokenizer import metrics
from services.tokenizer.front import Front, TextChunk

MAX_REQUEST_ID_LEN = 128


def counted(fn):
    """Count each finished RPC by method and final status code (outermost decorator)."""
    method = fn.__name__

    def record(context, exc: BaseException | None) -> None:
        if isinstance(exc, asyncio.CancelledError):
            code = grpc.StatusCode.CANCELLED
        else:
            code = context.code() or (grpc.StatusCode.OK if exc is None else grpc.StatusCode.INTERNAL)
        metrics.REQUESTS.labels(method, code.name if hasattr(code, "name") else str(code)).inc()

    if inspect.isasyncgenfunction(fn):
        @functools.wraps(fn)
        async def stream(self, request, context):
            exc = None
            try:
                async for item in fn(self, request, context):
                    yield item
            except BaseException as e:
                exc = e
                raise
            finally:
                record(context, exc)
        return stream

    @functools.wraps(fn)
    async def unary(self, request, context):
        exc = None
        try:
            return await fn(self, request, context)
        except BaseException as e:
            exc = e
            raise
        finally:
            record(context, exc)
    return unary


def _messages(chat: tokenizer_pb2.ChatMessages) -> list[dict]:
    return [{"role": m.role, "content": m.content} for m in chat.messages]


def chunk_to_pb(request_id: str, chunk: TextChunk, token_text) -> tokenizer_pb2.GenerateResponse:
    pb = tokenizer_pb2.GenerateResponse(
        request_id=request_id, text=chunk.text, token_ids=chunk.token_ids,
        finish_reason=FINISH_REASON_TO_PB[chunk.finish_reason], stop_string=chunk.stop_string)
    for lp in chunk.logprobs:
        entry = logprob_to_pb(lp)
        for top in entry.top_logprobs:
            top.token = token_text(top.token_id)
        pb.logprobs.append(entry)
    if chunk.finish_reason is not None:
        pb.usage.CopyFrom(common_pb2.Usage(prompt_tokens=chunk.num_prompt_tokens,
                                           completion_tokens=chunk.num_output_tokens,
                                           cached_tokens=chunk.num_cached_tokens))
    return pb


class GenerationServicer(tokenizer_pb2_grpc.GenerationServicer):
    def __init__(self, front: Front):
        self.front = front

    async def _prompt_ids(self, request) -> list[int]:
        which = request.WhichOneof("input")
        if which is None:
            raise InvalidArgument("one of prompt, chat or token_ids is required")
        if which == "prompt":
            if not request.prompt:
                raise InvalidArgument("prompt is empty")
            return await self.front.encode(prompt=request.prompt)
        if which == "chat":
            if not request.chat.messages:
                raise InvalidArgument("chat has no messages")
            return await self.front.encode(messages=_messages(request.chat))
        return list(request.token_ids.ids)

    @counted
    @handle_errors
    async def Generate(self, request, context):
        started = time.monotonic()
        if len(request.request_id) > MAX_REQUEST_ID_LEN:
            raise InvalidArgument(f"request_id is longer than {MAX_REQUEST_ID_LEN} characters")
        request_id = request.request_id or uuid.uuid4().hex
        prompt_ids = await self._prompt_ids(request)
        limits = await self.front.limits()
        sampling = sampling_from_pb(request.sampling, room=limits.max_model_len - len(prompt_ids))
        await self.front.validate(prompt_ids, sampling)
        skip_special = request.skip_special_tokens if request.HasField("skip_special_tokens") else True
        metrics.INPUT_TOKENS.observe(len(prompt_ids))
        metrics.INPUT_TOKENS_TOTAL.inc(len(prompt_ids))
        metrics.IN_FLIGHT.inc()
        num_output, first = 0, True
        try:
            async for chunk in self.front.generate(prompt_ids, sampling, skip_special,
                                                   timeout=time_remaining(context)):
                if first and chunk.token_ids:
                    metrics.TTFT.observe(time.monotonic() - started)
                    first = False
                num_output += len(chunk.token_ids)
                yield chunk_to_pb(request_id, chunk, self.front.tokenizer.token_text)
        finally:
            metrics.IN_FLIGHT.dec()
            metrics.OUTPUT_TOKENS.observe(num_output)
            metrics.OUTPUT_TOKENS_TOTAL.inc(num_output)
            metrics.LATENCY.observe(time.monotonic() - started)

    @counted
    @handle_errors
    async def Tokenize(self, request, context):
        which = request.WhichOneof("input")
        if which is None:
            raise InvalidArgument("one of prompt or chat is required")
        add_special = request.add_special_tokens if request.HasField("add_special_tokens") else True
        if which == "chat":
            ids = await self.front.encode(messages=_messages(request.chat))
        else:
            ids = await self.front.encode(prompt=request.prompt, add_special_tokens=add_special)
        tokens = self.front.tokenizer.hf.convert_ids_to_tokens(ids)
        return tokenizer_pb2.TokenizeResponse(token_ids=ids, tokens=tokens)

    @counted
    @handle_errors
    async def Detokenize(self, request, context):
        limits = await self.front.limits()
        ids = list(request.token_ids)
        bad = [i for i in ids if not 0 <= i < limits.vocab_size]
        if bad:
            raise InvalidArgument(f"token ids outside [0, {limits.vocab_size}): {bad[:8]}")
        skip = request.skip_special_tokens if request.HasField("skip_special_tokens") else True
        text = await asyncio.to_thread(self.front.tokenizer.decode, ids, skip)
        return tokenizer_pb2.DetokenizeResponse(text=text)

    @counted
    @handle_errors
    async def GetModelInfo(self, request, context):
        limits = await self.front.limits()
        tok = self.front.tokenizer
        return tokenizer_pb2.ModelInfo(
            model_name=tok.model_name, max_model_len=limits.max_model_len,
            vocab_size=limits.vocab_size, eos_token_ids=tok.eos_token_ids,
            has_chat_template=tok.has_chat_template)
