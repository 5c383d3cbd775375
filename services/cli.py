"""The `sluice` command: run the stack or one service, talk to a running stack, make the demo model."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from services.common.rpc import ServerAddress

DEFAULT_PORTS = {"tokenizer": (50051, 9401), "scheduler": (50052, 9402), "worker": (50053, 9403)}


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 in containers)")
    p.add_argument("--log-level", default="INFO")


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None,
                   help="Hugging Face model directory (default: the built-in demo model)")


def _add_worker_flags(p: argparse.ArgumentParser, own_budget: bool = True) -> None:
    g = p.add_argument_group("worker")
    if own_budget:  # `serve` shares the scheduler's flag
        g.add_argument("--max-num-batched-tokens", type=int, default=4096,
                       help="largest step: sizes the profile forward pass")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"])
    g.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    g.add_argument("--load-format", default="safetensors", choices=["safetensors", "dummy"],
                   help="dummy: random weights from config.json alone (benchmarks)")
    g.add_argument("--block-size", type=int, default=16, help="tokens per KV cache block")
    g.add_argument("--num-kv-blocks", type=int, default=None, help="fixed KV block count")
    g.add_argument("--kv-cache-memory", type=float, default=0.25,
                   help="GiB of KV cache on the CPU (ignored on CUDA)")
    g.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                   help="fraction of GPU memory for weights + activations + KV cache")
    g.add_argument("--max-model-len", type=int, default=None, help="cap on prompt + output tokens")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--enforce-eager", action="store_true",
                   help="CUDA: run decode eagerly instead of replaying CUDA graphs")
    g.add_argument("--max-graph-batch-size", type=int, default=256,
                   help="CUDA: largest decode batch captured in a CUDA graph")
    g.add_argument("--max-graph-prefill-tokens", type=int, default=512,
                   help="CUDA: longest single-sequence prefill captured in a CUDA graph (0: none)")


def _add_scheduler_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scheduler")
    g.add_argument("--max-num-seqs", type=int, default=256, help="cap on running sequences")
    g.add_argument("--max-num-batched-tokens", type=int, default=4096, help="token budget per step")
    g.add_argument("--max-waiting-requests", type=int, default=4096,
                   help="queue length past which requests get RESOURCE_EXHAUSTED")
    g.add_argument("--no-prefix-caching", action="store_true")
    g.add_argument("--pipeline-depth", type=int, default=2, choices=[1, 2],
                   help="steps in flight: 2 overlaps scheduling with the worker's step")
    g.add_argument("--stream-interval", type=int, default=1,
                   help="tokens per streamed message after the first (fewer, larger messages)")


def _ports(p: argparse.ArgumentParser, service: str) -> None:
    port, metrics = DEFAULT_PORTS[service]
    p.add_argument("--port", type=int, default=port, help="gRPC port")
    p.add_argument("--metrics-port", type=int, default=metrics, help="Prometheus port (0: off)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sluice", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run tokenizer, scheduler and worker as three processes")
    _add_common(p)
    _add_model(p)
    for name, (port, metrics) in DEFAULT_PORTS.items():
        p.add_argument(f"--{name}-port", type=int, default=port)
        p.add_argument(f"--{name}-metrics-port", type=int, default=metrics)
    p.add_argument("--startup-timeout", type=float, default=900.0)
    _add_worker_flags(p, own_budget=False)
    _add_scheduler_flags(p)

    p = sub.add_parser("worker", help="run one model worker")
    _add_common(p)
    _add_model(p)
    _ports(p, "worker")
    _add_worker_flags(p)

    p = sub.add_parser("scheduler", help="run one scheduler")
    _add_common(p)
    _ports(p, "scheduler")
    p.add_argument("--worker-address", default="127.0.0.1:50053")
    p.add_argument("--worker-startup-timeout", type=float, default=900.0)
    _add_scheduler_flags(p)

    p = sub.add_parser("tokenizer", help="run one tokenizer (front) service")
    _add_common(p)
    _add_model(p)
    _ports(p, "tokenizer")
    p.add_argument("--scheduler-address", default="127.0.0.1:50052")

    for name, help_ in (("generate", "stream a completion from a running stack"),
                        ("chat", "interactive chat with a running stack")):
        p = sub.add_parser(name, help=help_)
        if name == "generate":
            p.add_argument("prompt")
        p.add_argument("--address", default="127.0.0.1:50051")
        p.add_argument("--max-tokens", type=int, default=None)
        p.add_argument("--temperature", type=float, default=None)
        p.add_argument("--top-p", type=float, default=None)
        p.add_argument("--top-k", type=int, default=None)
        p.add_argument("--seed", type=int, default=None)
        p.add_argument("--stop", action="append", default=[])
        p.add_argument("--timeout", type=float, default=None, help="deadline in seconds")

    from benchmarks.serve import add_arguments
    add_arguments(sub.add_parser("bench", help="serving benchmark (TTFT, TPOT, ITL, throughput)"))

    p = sub.add_parser("demo-model", help="write the built-in demo model to a directory")
    p.add_argument("dir")
    return parser


def _model_dir(args) -> str:
    if args.model:
        return args.model
    from services.common.demo_model import ensure_demo_model
    return ensure_demo_model()


def _worker_config(args):
    from services.worker.config import WorkerConfig
    return WorkerConfig(
        model=_model_dir(args), dtype=args.dtype, device=args.device, load_format=args.load_format,
        block_size=args.block_size, num_kv_blocks=args.num_kv_blocks,
        kv_cache_memory_bytes=int(args.kv_cache_memory * (1 << 30)),
        gpu_memory_utilization=args.gpu_memory_utilization, max_model_len=args.max_model_len,
        max_num_batched_tokens=args.max_num_batched_tokens, seed=args.seed,
        enforce_eager=args.enforce_eager, max_graph_batch_size=args.max_graph_batch_size,
        max_graph_prefill_tokens=args.max_graph_prefill_tokens)


def _scheduler_config(args):
    from services.scheduler.config import SchedulerConfig
    return SchedulerConfig(max_num_seqs=args.max_num_seqs,
                           max_num_batched_tokens=args.max_num_batched_tokens,
                           max_waiting_requests=args.max_waiting_requests,
                           enable_prefix_caching=not args.no_prefix_caching,
                           pipeline_depth=args.pipeline_depth, stream_interval=args.stream_interval)


def _run_service(serve_coro_factory) -> int:
    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve_coro_factory(stop)

    asyncio.run(main())
    return 0


def _forward(args, names: list[str]) -> list[str]:
    """Re-emit parsed flags for a child process."""
    out = []
    for name in names:
        value = getattr(args, name)
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            out += [flag] if value else []
        elif value is not None:
            out += [flag, str(value)]
    return out


WORKER_FLAGS = ["dtype", "device", "load_format", "block_size", "num_kv_blocks", "kv_cache_memory",
                "gpu_memory_utilization", "max_model_len", "seed", "max_num_batched_tokens",
                "enforce_eager", "max_graph_batch_size", "max_graph_prefill_tokens"]
SCHEDULER_FLAGS = ["max_num_seqs", "max_num_batched_tokens", "max_waiting_requests",
                   "no_prefix_caching", "pipeline_depth", "stream_interval"]


def cmd_serve(args) -> int:
    from services import launcher
    model = _model_dir(args)
    h = args.host
    base = ["--host", h, "--log-level", args.log_level]
    commands = [
        ("worker", ["worker", *base, "--model", model, "--port", str(args.worker_port),
                    "--metrics-port", str(args.worker_metrics_port),
                    *_forward(args, WORKER_FLAGS)], f"{h}:{args.worker_port}"),
        ("scheduler", ["scheduler", *base, "--port", str(args.scheduler_port),
                       "--metrics-port", str(args.scheduler_metrics_port),
                       "--worker-address", f"{h}:{args.worker_port}",
                       *_forward(args, SCHEDULER_FLAGS)],
         f"{h}:{args.scheduler_port}"),
        ("tokenizer", ["tokenizer", *base, "--model", model, "--port", str(args.tokenizer_port),
                       "--metrics-port", str(args.tokenizer_metrics_port),
                       "--scheduler-address", f"{h}:{args.scheduler_port}"],
         f"{h}:{args.tokenizer_port}"),
    ]
    print(f"Sluice: starting worker, scheduler and tokenizer for {model}", flush=True)
    return launcher.serve(commands, args.startup_timeout)


def cmd_worker(args) -> int:
    from services.worker.server import WorkerServiceConfig, serve
    config = WorkerServiceConfig(_worker_config(args),
                                 ServerAddress(args.host, args.port, args.metrics_port))
    return _run_service(lambda stop: serve(config, stop=stop))


def cmd_scheduler(args) -> int:
    from services.scheduler.server import SchedulerServiceConfig, serve
    config = SchedulerServiceConfig(ServerAddress(args.host, args.port, args.metrics_port),
                                    args.worker_address, _scheduler_config(args),
                                    args.worker_startup_timeout)
    return _run_service(lambda stop: serve(config, stop=stop))


def cmd_tokenizer(args) -> int:
    from services.tokenizer.server import TokenizerServiceConfig, serve
    config = TokenizerServiceConfig(_model_dir(args),
                                    ServerAddress(args.host, args.port, args.metrics_port),
                                    args.scheduler_address)
    return _run_service(lambda stop: serve(config, stop=stop))


def _sampling(args) -> dict:
    keys = {"max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p,
            "top_k": args.top_k, "seed": args.seed}
    out = {k: v for k, v in keys.items() if v is not None}
    if args.stop:
        out["stop"] = args.stop
    return out


def _stream(responses) -> str:
    import grpc
    text = []
    try:
        for r in responses:
            print(r.text, end="", flush=True)
            text.append(r.text)
            if r.finish_reason:
                from services.common.pb import common_pb2
                reason = common_pb2.FinishReason.Name(r.finish_reason)
                print(f"\n[{reason.removeprefix('FINISH_REASON_').lower()}: "
                      f"{r.usage.prompt_tokens} prompt + {r.usage.completion_tokens} completion tokens]",
                      file=sys.stderr)
    except grpc.RpcError as exc:
        print(f"\nerror: {exc.code().name}: {exc.details()}", file=sys.stderr)
        raise SystemExit(1)
    return "".join(text)


def cmd_generate(args) -> int:
    from services.client import SluiceClient
    with SluiceClient(args.address) as client:
        _stream(client.generate(args.prompt, timeout=args.timeout, **_sampling(args)))
    return 0


def cmd_chat(args) -> int:
    from services.client import SluiceClient
    history: list[dict] = []
    print("Chat with the model; an empty line or Ctrl-D ends the chat.", file=sys.stderr)
    with SluiceClient(args.address) as client:
        while True:
            try:
                line = input("you> ")
            except EOFError:
                break
            if not line.strip():
                break
            history.append({"role": "user", "content": line})
            print("assistant> ", end="", flush=True)
            reply = _stream(client.generate(messages=history, timeout=args.timeout, **_sampling(args)))
            history.append({"role": "assistant", "content": reply})
    return 0


def cmd_demo_model(args) -> int:
    from services.common.demo_model import ensure_demo_model
    print(ensure_demo_model(args.dir))
    return 0


def cmd_bench(args) -> int:
    from benchmarks.serve import run
    return run(args)


COMMANDS = {"bench": cmd_bench, "serve": cmd_serve, "worker": cmd_worker, "scheduler": cmd_scheduler,
            "tokenizer": cmd_tokenizer, "generate": cmd_generate, "chat": cmd_chat,
            "demo-model": cmd_demo_model}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(args, "log_level"):
        logging.basicConfig(level=args.log_level.upper(),
                            format=f"%(asctime)s {args.command} %(levelname)s %(name)s: %(message)s")
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
