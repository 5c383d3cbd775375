"""Compare Sluice serving results with peer engines and the decode roofline, as a markdown table.

Reads every *.json, *.jsonl, *.log and *.txt file under a results directory (recursively). A file is
one JSON value (an object or a list of objects) or JSON lines; lines that are not JSON objects (log
output) are skipped. Records it knows:

- `what: "sluice_serve"`: a `benchmarks.serve` result;
- `what: "hf_generate"`: the transformers peer: batch, prompt, new, out_tok_per_s, weight_GB;
- `what: "copy_bw_TBps"`: a measured device-memory copy bandwidth, `value` in TB/s;
- `what: "lmdeploy_pytorch"`: the LMDeploy peer: requests, out_tok_per_s.

Definitions, per Sluice run:

- B = the run's concurrency (`--max-concurrency`, or every request when sent all at once); runs
  with a finite request rate have no B and are not matched;
- Sluice figure = output token throughput (output tokens / duration);
- peer figure = the best out_tok_per_s of the transformers records with batch == B (same
  prompt/new lengths preferred; a figure at other lengths is marked †) and of the LMDeploy records
  with requests == B; ratio = Sluice / peer;
- decode tok/s = B / mean TPOT (B streams, each producing a token every TPOT);
- roofline tok/s at B = bandwidth / (weight bytes + B * context * KV bytes per token) * B: every
  decode step reads the weights once and each sequence's KV cache, context = input_len +
  output_len / 2 (the mean context over the decode steps), KV bytes per token = 2 (K and V) *
  layers * kv_heads * head_dim * dtype bytes (Llama-3-8B in bf16: 128 KiB);
- % roofline = decode tok/s / roofline tok/s;
- GPU busy = the worker's GPU step time over the run / its duration, and preemptions, from the
  run's `server_counters` (see benchmarks.server_counters), where it has them.

Bandwidth is --bandwidth-tbps or else the highest measured copy bandwidth; weight bytes are
--weight-gb or else the transformers peer's weight_GB. GB and TB/s are decimal (1e9 B, 1e12 B/s).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

SUFFIXES = (".json", ".jsonl", ".log", ".txt")
MISSING = "—"


@dataclass
class Records:
    sluice: list[dict] = field(default_factory=list)
    hf: list[dict] = field(default_factory=list)
    lmdeploy: list[dict] = field(default_factory=list)
    bandwidths_tbps: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class ModelShape:
    """What one token of context costs in KV cache."""

    num_layers: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    dtype_bytes: int = 2

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V of every layer: 2 * layers * kv_heads * head_dim * dtype bytes."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.dtype_bytes


# ---------------------------------------------------------------- reading


def parse_text(text: str) -> list[dict]:
    """The JSON objects in `text`: one JSON object or list of objects, else one object per line
    (other lines skipped)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return [obj for obj in map(_json_object, text.splitlines()) if obj is not None]
    items = value if isinstance(value, list) else [value]
    return [item for item in items if isinstance(item, dict)]


def _json_object(line: str) -> dict | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def read_records(directory: str) -> Records:
    """Every known record under `directory`, each tagged with `_source` (its file's path)."""
    records = Records()
    for path in sorted(p for p in Path(directory).rglob("*") if p.is_file() and p.suffix in SUFFIXES):
        for obj in parse_text(path.read_text(encoding="utf-8", errors="replace")):
            _classify(records, {**obj, "_source": str(path.relative_to(directory))})
    return records


def _classify(records: Records, obj: dict) -> None:
    what = obj.get("what")
    if what == "sluice_serve":
        records.sluice.append(obj)
    elif what == "hf_generate":
        records.hf.append(obj)
    elif what == "lmdeploy_pytorch":
        records.lmdeploy.append(obj)
    elif what == "copy_bw_TBps":
        records.bandwidths_tbps.append(float(obj["value"]))


# ---------------------------------------------------------------- figures


def decode_roofline_tok_per_s(batch: int, bandwidth_bytes_per_s: float, weight_bytes: float,
                              kv_bytes_per_token: float, context_len: float) -> float:
    """bandwidth / (weight bytes + batch * context * KV bytes per token) * batch."""
    bytes_per_step = weight_bytes + batch * context_len * kv_bytes_per_token
    return bandwidth_bytes_per_s / bytes_per_step * batch


def mean_decode_context(input_len: int, output_len: int) -> float:
    """Mean context length over a request's decode steps: input_len + output_len / 2."""
    return input_len + output_len / 2


def decode_tok_per_s(run: dict) -> float | None:
    """B / mean TPOT: the aggregate decode rate of B streams; None without B or TPOT."""
    batch, tpot_ms = run.get("concurrency"), run.get("mean_tpot_ms") or 0.0
    if not batch or tpot_ms <= 0:
        return None
    return batch / (tpot_ms / 1000.0)


def match_hf(run: dict, hf: list[dict]) -> tuple[dict | None, bool]:
    """(best transformers record with batch == B, whether its prompt/new lengths equal the run's);
    a record at the same lengths wins over a faster one at other lengths."""
    same_batch = [r for r in hf if r.get("batch") == run.get("concurrency")]
    same_shape = [r for r in same_batch
                  if r.get("prompt") == run.get("input_len") and r.get("new") == run.get("output_len")]
    pool = same_shape or same_batch
    if not pool or not run.get("concurrency"):
        return None, False
    return max(pool, key=lambda r: r["out_tok_per_s"]), bool(same_shape)


def match_lmdeploy(run: dict, lmdeploy: list[dict]) -> dict | None:
    """The best LMDeploy record with requests == B."""
    pool = [r for r in lmdeploy if run.get("concurrency") and r.get("requests") == run["concurrency"]]
    return max(pool, key=lambda r: r["out_tok_per_s"]) if pool else None


def weight_gb(records: Records, override: float | None) -> float | None:
    """--weight-gb, else the first transformers record's weight_GB (warning when records disagree)."""
    if override is not None:
        return override
    values = [float(r["weight_GB"]) for r in records.hf if r.get("weight_GB") is not None]
    if not values:
        return None
    if max(values) > min(values) * 1.01:
        print(f"warning: transformers records disagree on weight_GB ({min(values)}..{max(values)}); "
              f"using {values[0]}", file=sys.stderr)
    return values[0]


def bandwidth_tbps(records: Records, override: float | None) -> float | None:
    """--bandwidth-tbps, else the highest measured copy bandwidth."""
    if override is not None:
        return override
    return max(records.bandwidths_tbps) if records.bandwidths_tbps else None


@dataclass(frozen=True)
class Roofline:
    bandwidth_tbps: float | None
    weight_gb: float | None
    shape: ModelShape

    def tok_per_s(self, run: dict) -> float | None:
        """The decode roofline at the run's B and lengths; None when something is unknown."""
        batch = run.get("concurrency")
        if not batch or self.bandwidth_tbps is None or self.weight_gb is None:
            return None
        context = mean_decode_context(run["input_len"], run["output_len"])
        return decode_roofline_tok_per_s(batch, self.bandwidth_tbps * 1e12, self.weight_gb * 1e9,
                                         self.shape.kv_bytes_per_token, context)


# ---------------------------------------------------------------- table


def _num(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}×" if a is not None and b else MISSING


def _percent(a: float | None, b: float | None) -> str:
    return f"{100 * a / b:.1f}%" if a is not None and b else MISSING


def run_row(run: dict, records: Records, roofline: Roofline) -> list[str]:
    """One Sluice run's cells, in the order of `header(with_lmdeploy)`."""
    hf, hf_same_shape = match_hf(run, records.hf)
    hf_tps = hf["out_tok_per_s"] if hf else None
    decode, ceiling = decode_tok_per_s(run), roofline.tok_per_s(run)
    cells = [run.get("label") or Path(run["_source"]).stem, run["backend"],
             str(run.get("concurrency") or MISSING), f"{run['input_len']}/{run['output_len']}",
             _num(run["output_throughput"]),
             _num(hf_tps) + ("" if hf is None or hf_same_shape else " †"),
             _ratio(run["output_throughput"], hf_tps)]
    if records.lmdeploy:
        lmd = match_lmdeploy(run, records.lmdeploy)
        lmd_tps = lmd["out_tok_per_s"] if lmd else None
        cells += [_num(lmd_tps), _ratio(run["output_throughput"], lmd_tps)]
    cells += [_num(run["median_ttft_ms"]), _num(run["median_tpot_ms"]),
              _num(run["mean_decode_tok_per_s"]), _num(decode), _num(ceiling), _percent(decode, ceiling)]
    counters = run.get("server_counters") or {}
    busy = counters.get("gpu_busy_fraction")
    cells += [f"{100 * busy:.0f}%" if busy is not None else MISSING,
              _num(counters.get("preemptions"))]
    return cells


def header(with_lmdeploy: bool) -> list[str]:
    cells = ["run", "backend", "B", "in/out", "Sluice out tok/s", "HF out tok/s", "Sluice/HF"]
    if with_lmdeploy:
        cells += ["LMDeploy out tok/s", "Sluice/LMDeploy"]
    return cells + ["TTFT p50 ms", "TPOT p50 ms", "decode tok/s per stream", "decode tok/s (B/TPOT)",
                    "roofline tok/s", "% roofline", "GPU busy", "preemptions"]


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _sort_key(run: dict) -> tuple:
    return (run["backend"], run.get("concurrency") or 0, run["input_len"], run["output_len"],
            run["_source"])


def peer_rows(records: Records) -> list[list[str]]:
    """Every peer record, for reference."""
    rows = [["transformers", str(r["batch"]), f"{r.get('prompt', MISSING)}/{r.get('new', MISSING)}",
             _num(r["out_tok_per_s"]), r["_source"]] for r in records.hf]
    rows += [["LMDeploy (PyTorch)", str(r["requests"]), MISSING, _num(r["out_tok_per_s"]), r["_source"]]
             for r in records.lmdeploy]
    return rows


def assumptions(roofline: Roofline) -> str:
    bw = f"{roofline.bandwidth_tbps:.2f} TB/s" if roofline.bandwidth_tbps is not None else "unknown"
    w = f"{roofline.weight_gb:.2f} GB" if roofline.weight_gb is not None else "unknown"
    kv = roofline.shape.kv_bytes_per_token / 1024
    return (f"Roofline: bandwidth {bw}, weights {w}, KV {kv:g} KiB per token of context; "
            "roofline tok/s = bandwidth / (weights + B × (in + out/2) × KV per token) × B.")


def _hf_at_other_lengths(run: dict, hf: list[dict]) -> bool:
    match, same_lengths = match_hf(run, hf)
    return match is not None and not same_lengths


def render(records: Records, roofline: Roofline) -> str:
    """The whole markdown report."""
    runs = sorted(records.sluice, key=_sort_key)
    parts = ["## Sluice vs peers", "", assumptions(roofline), "",
             markdown_table(header(bool(records.lmdeploy)),
                            [run_row(run, records, roofline) for run in runs])]
    if any(_hf_at_other_lengths(run, records.hf) for run in runs):
        parts += ["", "† transformers figure at the same batch but other prompt/new lengths."]
    peers = peer_rows(records)
    if peers:
        parts += ["", "### Peer figures", "",
                  markdown_table(["peer", "batch/requests", "in/out", "out tok/s", "source"], peers)]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- command line


def build_parser(prog: str = "python -m benchmarks.report") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("results_dir", help="directory of result files (searched recursively)")
    parser.add_argument("--markdown-out", default=None, help="also write the report to this file")
    parser.add_argument("--bandwidth-tbps", type=float, default=None,
                        help="device memory bandwidth (default: the highest measured copy bandwidth)")
    parser.add_argument("--weight-gb", type=float, default=None,
                        help="weight bytes / 1e9 (default: the transformers peer's weight_GB)")
    shape = ModelShape()
    parser.add_argument("--num-layers", type=int, default=shape.num_layers)
    parser.add_argument("--num-kv-heads", type=int, default=shape.num_kv_heads)
    parser.add_argument("--head-dim", type=int, default=shape.head_dim)
    parser.add_argument("--kv-dtype-bytes", type=int, default=shape.dtype_bytes)
    return parser


def validate_args(args: argparse.Namespace) -> str | None:
    """What is wrong with the arguments, or None."""
    if not Path(args.results_dir).is_dir():
        return f"{args.results_dir} is not a directory"
    for name in ("bandwidth_tbps", "weight_gb", "num_layers", "num_kv_heads", "head_dim",
                 "kv_dtype_bytes"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            return f"--{name.replace('_', '-')} must be > 0, got {value}"
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    problem = validate_args(args)
    records = None if problem else read_records(args.results_dir)
    if records is not None and not records.sluice:
        problem = f"no Sluice results (what=sluice_serve) under {args.results_dir}"
    if problem:
        print(f"report error: {problem}", file=sys.stderr)
        return 2
    shape = ModelShape(args.num_layers, args.num_kv_heads, args.head_dim, args.kv_dtype_bytes)
    roofline = Roofline(bandwidth_tbps(records, args.bandwidth_tbps),
                        weight_gb(records, args.weight_gb), shape)
    text = render(records, roofline)
    print(text, end="")
    if args.markdown_out:
        Path(args.markdown_out).write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
