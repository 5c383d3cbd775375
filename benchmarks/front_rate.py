"""The tokenizer (front) service's CPU cost per streamed token, against a scheduler that costs nothing.

`python -m benchmarks.front_rate [--streams 64] [--tokens 256] [--step-ms 10] [--model DIR]` starts
the real tokenizer service (`sluice tokenizer`, its own process) in front of a stand-in scheduler
(in this process): the stand-in answers `Scheduler.Multiplex` with one reply per step of
`--step-ms`, holding one new token for every live request, as the real scheduler does. A client in
this process opens `--streams` concurrent `Generation.Generate` calls of `--tokens` tokens each
(token-id prompts, random output ids of the demo model's vocabulary) and reads them to the end.

It prints the tokenizer process's CPU seconds (user + system, from /proc) per streamed token, and
the messages per token its clients received (below 1 when the service fell behind and merged
queued tokens into one message). Runs anywhere (Linux), no GPU, no model weights.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc

from services.common.pb import common_pb2, scheduler_pb2, scheduler_pb2_grpc, tokenizer_pb2, tokenizer_pb2_grpc


class SteppingScheduler(scheduler_pb2_grpc.SchedulerServicer):
    """Every `step_s`, one Multiplex reply with a token for each live request (ends at max_tokens)."""

    def __init__(self, step_s: float, vocab_size: int):
        self.step_s = step_s
        self.vocab_size = vocab_size

    async def GetInfo(self, request, context):
        return scheduler_pb2.SchedulerInfo(model_name="stand-in", max_model_len=1 << 20,
                                           vocab_size=self.vocab_size, eos_token_ids=[])

    async def Multiplex(self, request_iterator, context):
        live: dict[str, list[int]] = {}  # request id -> [tokens left, prompt length]
        rng = random.Random(0)

        async def read() -> None:
            async for message in request_iterator:
                if message.WhichOneof("action") == "generate":
                    g = message.generate
                    live[g.request_id] = [g.sampling.max_tokens, len(g.prompt_token_ids)]
                elif message.abort.request_id in live:
                    del live[message.abort.request_id]

        reader = asyncio.create_task(read())
        try:
            while not reader.done() or live:
                await asyncio.sleep(self.step_s)
                outputs = []
                for request_id, state in list(live.items()):
                    state[0] -= 1
                    out = scheduler_pb2.GenerateTokensResponse(request_id=request_id,
                                                               token_ids=[rng.randrange(self.vocab_size)])
                    if state[0] <= 0:
                        del live[request_id]
                        out.finish_reason = common_pb2.FINISH_REASON_LENGTH
                        out.usage.prompt_tokens = state[1]
                    outputs.append(out)
                if outputs:
                    yield scheduler_pb2.MultiplexResponse(outputs=outputs)
        finally:
            reader.cancel()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def run(args) -> dict:
    from services.common.demo_model import ensure_demo_model
    from services.tokenizer.tokenizer import TextTokenizer

    model = args.model or ensure_demo_model()
    vocab_size = TextTokenizer(model).vocab_size
    server = grpc.aio.server()
    scheduler_pb2_grpc.add_SchedulerServicer_to_server(SteppingScheduler(args.step_ms / 1e3, vocab_size), server)
    scheduler_port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    port = _free_port()
    front = subprocess.Popen([sys.executable, "-m", "services.cli", "tokenizer", "--model", model,
                              "--port", str(port), "--metrics-port", str(_free_port()),
                              "--scheduler-address", f"127.0.0.1:{scheduler_port}", "--log-level", "WARNING"])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            await asyncio.wait_for(channel.channel_ready(), 120)
            stub = tokenizer_pb2_grpc.GenerationStub(channel)

            async def one(i: int, tokens: int) -> tuple[int, int]:
                request = tokenizer_pb2.GenerateRequest(token_ids=tokenizer_pb2.TokenIds(ids=[1 + i % 50] * 16))
                request.sampling.max_tokens = tokens
                messages = received = 0
                async for response in stub.Generate(request):
                    messages += 1
                    received += len(response.token_ids)
                return messages, received

            await asyncio.gather(*(one(i, 8) for i in range(args.streams)))  # warm-up
            cpu_before, started = cpu_seconds(front.pid), time.perf_counter()
            results = await asyncio.gather(*(one(i, args.tokens) for i in range(args.streams)))
            elapsed, cpu = time.perf_counter() - started, cpu_seconds(front.pid) - cpu_before
    finally:
        front.terminate()
        front.wait(30)
        await server.stop(0)
    messages = sum(m for m, _ in results)
    tokens = sum(t for _, t in results)
    assert tokens == args.streams * args.tokens, (tokens, args.streams * args.tokens)
    return {"what": "front_rate", "streams": args.streams, "tokens_per_stream": args.tokens,
            "step_ms": args.step_ms, "tokens": tokens, "seconds": elapsed, "tokens_per_s": tokens / elapsed,
            "messages_per_token": messages / tokens, "front_cpu_s": cpu, "front_cpu_us_per_token": cpu / tokens * 1e6}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--step-ms", type=float, default=10.0)
    parser.add_argument("--model", help="model directory for the tokenizer (default: the demo model)")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args))
    print(f"{result['streams']} streams x {result['tokens_per_stream']} tokens, a step every {args.step_ms:g} ms: "
          f"{result['tokens_per_s']:,.0f} tokens/s, {result['messages_per_token']:.2f} messages per token, "
          f"tokenizer CPU {result['front_cpu_us_per_token']:.1f} µs per token")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
