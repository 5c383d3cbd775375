"""Model directories of real architectures' shapes for benchmarks, without weights.

`python -m benchmarks.models llama3-8b DIR` writes config.json (and generation_config.json) of the
named shape plus the demo model's tokenizer files. Serve it with `--load-format dummy`: the worker
builds random weights on the device, so no checkpoint is written or read. Token ids beyond the
demo tokenizer's 2,000 decode to nothing, so benchmarks send token ids and count tokens.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

SHAPES = {
    "llama3-8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5),
    "qwen2-0.5b": dict(vocab_size=151936, hidden_size=896, intermediate_size=4864,
                       num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                       max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                       tie_word_embeddings=True),
}
ARCHITECTURES = {"llama3-8b": ("LlamaForCausalLM", "llama"), "qwen2-0.5b": ("Qwen2ForCausalLM", "qwen2")}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                   "special_tokens_map.json")


def write_shape_model(shape: str, out_dir: str, dtype: str = "bfloat16") -> str:
    from services.common.demo_model import ensure_demo_model

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {sorted(SHAPES)}")
    demo = Path(ensure_demo_model())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arch, model_type = ARCHITECTURES[shape]
    config = dict(SHAPES[shape], architectures=[arch], model_type=model_type, hidden_act="silu",
                  bos_token_id=0, eos_token_id=1, torch_dtype=dtype, tie_word_embeddings=
                  SHAPES[shape].get("tie_word_embeddings", False))
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": 1, "bos_token_id": 0}))
    for name in TOKENIZER_FILES:
        if (demo / name).exists():
            shutil.copy(demo / name, out / name)
    return str(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("dir")
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args(argv)
    print(write_shape_model(args.shape, args.dir, args.dtype))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
