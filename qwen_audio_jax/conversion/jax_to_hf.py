"""Our model directory -> a Hugging Face Qwen2-Audio directory (sharded safetensors + index + config +
tokenizer files) that `Qwen2AudioForConditionalGeneration.from_pretrained` loads with identical logits.

Streams one param group at a time (Orbax partial load), unstacks layers, and fills shards of at most
`max_shard_bytes`, so exporting a fine-tuned 7B model needs about one group of host memory, not the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import ml_dtypes
import numpy as np
from tqdm import tqdm

from qwen_audio_jax.checkpoint import model_dir as md
from qwen_audio_jax.conversion.name_map import qwen2_audio_rules, to_hf
from qwen_audio_jax.conversion.safetensors_io import write_safetensors
from qwen_audio_jax.errors import CheckpointError

DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3


def parse_size(text: str | int) -> int:
    """'5GB' / '500MB' / '2GiB' / 1000 -> bytes."""
    if isinstance(text, int):
        return text
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "B": 1}
    t = text.strip().upper()
    for unit in sorted(units, key=len, reverse=True):
        if t.endswith(unit):
            return int(float(t[: -len(unit)]) * units[unit])
    return int(t)


class _ShardWriter:
    """Accumulates tensors and writes `model-XXXXX.safetensors` files of at most max_bytes each."""

    def __init__(self, directory: Path, max_bytes: int):
        self.directory, self.max_bytes = directory, max_bytes
        self.pending: dict[str, np.ndarray] = {}
        self.pending_bytes = 0
        self.shards: list[list[str]] = []
        self.total = 0

    def add(self, name: str, x: np.ndarray) -> None:
        if self.pending and self.pending_bytes + x.nbytes > self.max_bytes:
            self.flush()
        self.pending[name] = np.ascontiguousarray(x)
        self.pending_bytes += x.nbytes
        self.total += x.nbytes

    def flush(self) -> None:
        if not self.pending:
            return
        write_safetensors(self.directory / f"shard-{len(self.shards):05d}.tmp", self.pending, {"format": "pt"})
        self.shards.append(list(self.pending))
        self.pending, self.pending_bytes = {}, 0

    def finish(self) -> dict[str, str]:
        """Renames shards to the HF convention and returns the weight map."""
        self.flush()
        n = len(self.shards)
        weight_map = {}
        for i, names in enumerate(self.shards):
            final = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            (self.directory / f"shard-{i:05d}.tmp").rename(self.directory / final)
            weight_map.update({name: final for name in names})
        return weight_map


def export_hf(
    src: str | Path,
    dst: str | Path,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_BYTES,
    overwrite: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Writes `dst` (atomically) from our model dir `src`. Tensors keep the stored dtype (bf16 stays bf16)."""
    src, dst = Path(src), Path(dst)
    config, _ = md.read_model_dir_config(src)
    stored = md.param_metadata(src)
    rules = qwen2_audio_rules(config)
    missing = [r.target for r in rules if r.target not in stored]
    if missing:
        raise CheckpointError(f"{src}: params {missing[:3]} are missing; the model dir is incomplete or not Qwen2-Audio.")
    with md.atomic_directory(dst, overwrite=overwrite) as tmp:
        shards = _ShardWriter(tmp, parse_size(max_shard_size))
        for rule in tqdm(rules, desc="export-hf", unit="param", disable=not progress):
            shape, dtype = stored[rule.target]
            x = md.load_param(src, rule.target, shape, dtype)
            if rule.num_layers is None:
                shards.add(rule.source, to_hf(rule.transform, x))
            else:
                for name, layer in zip(rule.source_names(), x):
                    shards.add(name, to_hf(rule.transform, layer))
            del x
        weight_map = shards.finish()
        if len(set(weight_map.values())) > 1:
            index = {"metadata": {"total_size": shards.total}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        hf_config = config.to_hf_config()
        hf_config["torch_dtype"] = "bfloat16" if any(d == ml_dtypes.bfloat16 for _, d in stored.values()) else "float32"
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        copied = md.copy_aux_files(src, tmp)
    log(f"exported {src} -> {dst}: {len(weight_map)} tensors, {shards.total / 1e9:.2f} GB, copied {', '.join(copied) or 'nothing else'}")
    return dst
