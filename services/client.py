"""A small Python client of the public Generation API, used by `sluice generate` and `sluice chat`.

    with SluiceClient("127.0.0.1:50051") as client:
        for delta in client.generate_text("Once upon a time", max_tokens=32):
            print(delta, end="")
"""
from __future__ import annotations

from collections.abc import Iterator

import grpc

from services.common.pb import common_pb2, tokenizer_pb2, tokenizer_pb2_grpc
from services.common.rpc import CHANNEL_OPTIONS


class SluiceClient:
    def __init__(self, address: str = "127.0.0.1:50051"):
        self.channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self.stub = tokenizer_pb2_grpc.GenerationStub(self.channel)

    def __enter__(self) -> SluiceClient:
        return self

    def __exit__(self, *exc) -> None:
        self.channel.close()

    def generate(self, prompt: str | None = None, messages: list[dict] | None = None,
                 token_ids: list[int] | None = None, timeout: float | None = None,
                 **sampling) -> Iterator[tokenizer_pb2.GenerateResponse]:
        """Stream GenerateResponse messages; sampling keywords are SamplingParams fields."""
        request = tokenizer_pb2.GenerateRequest(sampling=common_pb2.SamplingParams(**sampling))
        if messages is not None:
            request.chat.messages.extend(tokenizer_pb2.ChatMessage(**m) for m in messages)
        elif token_ids is not None:
            request.token_ids.ids.extend(token_ids)
        else:
            request.prompt = prompt or ""
        return self.stub.Generate(request, timeout=timeout)

    def generate_text(self, prompt: str, **kwargs) -> Iterator[str]:
        for response in self.generate(prompt, **kwargs):
            yield response.text

    def model_info(self) -> tokenizer_pb2.ModelInfo:
        return self.stub.GetModelInfo(tokenizer_pb2.GetModelInfoRequest(), timeout=10)
