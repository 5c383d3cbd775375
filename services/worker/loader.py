"""Builds a model on its device and fills its weights from a HF safetensors checkpoint, or randomly.

Checkpoint tensors keep their HF names. A model that packs several HF projections into one
parameter declares `packed_modules_mapping` (packed name -> [(HF name, shard id)]); each parameter's
`weight_loader(param, loaded, shard_id)` copies (and converts the dtype of) what it is given. Every
parameter (every shard of a packed one) must be found in the checkpoint; a tensor that maps to no
parameter is an error too, except for tied aliases (e.g. `lm_head.weight` when tied) and
`rotary_emb.inv_freq` buffers saved by old exporters.
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
from collections.abc import Hashable, Iterator

import torch
from safetensors import safe_open
from torch import nn
from tqdm import tqdm

from services.worker.config import WorkerConfig
from services.worker.layers.linear import default_weight_loader
from services.worker.model_config import ModelConfig
from services.worker.models.registry import resolve_model_class

INDEX_FILE = "model.safetensors.index.json"
DUMMY_STD = 0.02  # std of the dummy weights: small enough that activations stay finite at any depth


def load_model(config: WorkerConfig, model_config: ModelConfig, device: torch.device,
               dtype: torch.dtype) -> nn.Module:
    """The model for `model_config.architecture`, built directly on `device` in `dtype`, weights
    loaded as `config.load_format` says, in eval mode."""
    model_class = resolve_model_class(model_config.architecture)
    with _default_dtype(dtype), torch.device(device):
        model = model_class(model_config)
    if config.load_format == "dummy":
        initialize_dummy_weights(model, config.seed)
    else:
        load_weights(model, config.model)
    return model.eval()


def checkpoint_files(model_dir: str) -> list[str]:
    """The safetensors files of a checkpoint: those the index names when sharded, else the single file."""
    index_path = os.path.join(model_dir, INDEX_FILE)
    if os.path.isfile(index_path):
        with open(index_path) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(model_dir, name) for name in names]
        absent = [path for path in files if not os.path.isfile(path)]
        if absent:
            raise FileNotFoundError(f"{INDEX_FILE} names shards that do not exist: {absent}")
        return files
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    files = sorted(glob.glob(os.path.join(model_dir, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors checkpoint in {model_dir!r}")
    return files


def load_weights(model: nn.Module, model_dir: str) -> None:
    """Fill every parameter of `model` from the checkpoint in `model_dir` (see the module docstring)."""
    params = dict(model.named_parameters())
    aliases = set(dict(model.named_parameters(remove_duplicate=False))) - set(params)
    targets = _checkpoint_targets(params, getattr(model, "packed_modules_mapping", {}))
    loaded: set[str] = set()
    for name, tensor in _iter_tensors(checkpoint_files(model_dir)):
        if name not in targets:
            if name in aliases or name.endswith("rotary_emb.inv_freq"):
                continue
            raise ValueError(f"checkpoint tensor {name!r} matches no parameter of "
                             f"{type(model).__name__}")
        param_name, shard_id = targets[name]
        param = params[param_name]
        weight_loader = getattr(param, "weight_loader", default_weight_loader)
        try:
            weight_loader(param, tensor, shard_id)
        except ValueError as e:
            raise ValueError(f"cannot load checkpoint tensor {name!r} into {param_name!r}: {e}") from e
        loaded.add(name)
    missing = sorted(set(targets) - loaded)
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise ValueError(f"checkpoint {model_dir!r} is missing {len(missing)} tensor(s): {shown}")


def initialize_dummy_weights(model: nn.Module, seed: int) -> None:
    """Matrices (>= 2-D) drawn from N(0, DUMMY_STD^2) on their own device; 1-D parameters keep their
    constructed values (norm weights 1, biases 0). Deterministic for a given seed and device."""
    generators: dict[torch.device, torch.Generator] = {}
    for param in model.parameters():
        if param.dim() < 2:
            continue
        if param.device not in generators:
            generators[param.device] = torch.Generator(device=param.device).manual_seed(seed)
        param.data.normal_(0.0, DUMMY_STD, generator=generators[param.device])


def _checkpoint_targets(params: dict[str, nn.Parameter], packed: dict[str, list[tuple[str, Hashable]]]
                        ) -> dict[str, tuple[str, Hashable]]:
    """HF checkpoint name -> (parameter name, shard id or None), for every parameter (shard)."""
    targets: dict[str, tuple[str, Hashable]] = {}
    for param_name in params:
        parts = param_name.split(".")
        packed_name = next((part for part in parts if part in packed), None)
        if packed_name is None:
            targets[param_name] = (param_name, None)
            continue
        for shard_name, shard_id in packed[packed_name]:
            hf_name = ".".join(shard_name if part == packed_name else part for part in parts)
            targets[hf_name] = (param_name, shard_id)
    return targets


def _iter_tensors(files: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
    for path in tqdm(files, desc="Loading safetensors shards", unit="file"):
        with safe_open(path, framework="pt", device="cpu") as f:
            for name in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                yield name, f.get_tensor(name)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Process-wide while active: build the model at start-up only, not beside other torch work."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)
