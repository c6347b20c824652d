"""Our model directory -> a Hugging Face directory in the model generation's own format: Qwen2-Audio
(`Qwen2AudioForConditionalGeneration.from_pretrained` loads it with identical logits) or Qwen-Audio v1
(`QWenLMHeadModel` names, config and tokenizer files, loaded with trust_remote_code as the original).

Streams one param group at a time (Orbax partial load), unstacks layers, and fills shards of at most
`max_shard_bytes`, so exporting a fine-tuned 7B model needs about one group of host memory, not the model
(v1's fused c_attn needs its three q/k/v groups at once).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import ml_dtypes
import numpy as np
from tqdm import tqdm

from qwen_audio_jax.checkpoint.model_dir import (
    check_params,
    copy_aux_files,
    load_param,
    read_model_dir_config,
    read_source_config,
)
from qwen_audio_jax.checkpoint.safe_write import atomic_directory
from qwen_audio_jax.conversion.hf_config import from_hf_config, to_hf_config
from qwen_audio_jax.conversion.name_map import rules_for, to_hf
from qwen_audio_jax.conversion.peft import CONFIG_FILE as ADAPTER_CONFIG
from qwen_audio_jax.conversion.peft import WEIGHTS_FILE as ADAPTER_WEIGHTS
from qwen_audio_jax.conversion.peft import (
    KernelDelta,
    adapter_base,
    is_adapter_only,
    read_adapter,
    read_adapter_config,
)
from qwen_audio_jax.conversion.safetensors_io import write_safetensors
from qwen_audio_jax.errors import CheckpointError, ConfigError
from qwen_audio_jax.model.params import abstract_params

DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


def parse_size(text: str | int) -> int:
    """'5GB' / '500MB' / '2GiB' / '1000' / 1000 -> bytes (a positive whole number of bytes, else ConfigError)."""
    if isinstance(text, int) and not isinstance(text, bool):
        n = text
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?I?B?)\s*", str(text), re.IGNORECASE)
        if not m or m.group(2).upper() not in _UNITS:
            raise ConfigError(f"--max-shard-size {text!r} is not a size; use e.g. 5GB, 500MB or 2GiB.")
        n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n < 1:
        raise ConfigError(f"--max-shard-size {text!r} must be at least 1 byte; use e.g. 5GB.")
    return n


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
    """Writes `dst` (atomically) from our model dir `src`. Tensors keep the stored dtype (bf16 stays bf16).

    `src` may be a LoRA adapter dir (a LoRA run's OUTPUT/model): the export is its base with the adapter merged
    into the kernels (W + s * B A in fp32, then the stored dtype), as PEFT's merge_and_unload gives."""
    src, dst = Path(src).absolute(), Path(dst).absolute()
    max_bytes = parse_size(max_shard_size)
    adapter = None
    if is_adapter_only(src):
        fix = "its base_model_name_or_path must name the model dir it was trained on."
        src, adapter = adapter_base(src, fix), src
    config, _ = read_model_dir_config(src)
    deltas = {} if adapter is None else {"/".join(k): d for k, d in read_adapter(adapter, config).items()}
    # The stored shapes against config.json before anything is written: the export's config.json is made from
    # it, so an edited one would give an export whose config does not describe its tensors.
    stored = check_params(src, abstract_params(config))
    rules = rules_for(config)
    missing = [r.target for r in rules if r.target not in stored]
    if missing:
        raise CheckpointError(f"{src}: params {missing[:3]} are missing; the model dir is incomplete.")
    groups: dict[str, list] = {}  # HF source name (template) -> its rules, in part order
    for rule in rules:
        groups.setdefault(rule.source, []).append(rule)
    sources = (src,) if adapter is None else (src, adapter)
    with atomic_directory(dst, "hf-export", sources=sources, overwrite=overwrite, warn=log) as tmp:
        shards = _ShardWriter(tmp, max_bytes)
        for parts in tqdm(groups.values(), desc="export-hf", unit="param", disable=not progress):
            arrays = [_merged(load_param(src, r.target, *stored[r.target]), deltas.get(r.target)) for r in parts]
            first = parts[0]
            if first.num_layers is None:
                shards.add(first.source, _join(parts, arrays))
            else:
                for i, name in enumerate(first.source_names()):
                    shards.add(name, _join(parts, [a[i] for a in arrays]))
            del arrays
        weight_map = shards.finish()
        if len(set(weight_map.values())) > 1:
            index = {"metadata": {"total_size": shards.total}, "weight_map": weight_map}
            (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        (tmp / "config.json").write_text(json.dumps(_hf_config(src, config, stored), indent=2) + "\n")
        copied = copy_aux_files(src, tmp)
    merged = "" if adapter is None else f" with the adapter {adapter} merged"
    log(
        f"exported {src}{merged} -> {dst}: {len(weight_map)} tensors, {shards.total / 1e9:.2f} GB, copied "
        f"{', '.join(copied) or 'nothing else'}"
    )
    return dst


def _merged(kernel: np.ndarray, delta: KernelDelta | None) -> np.ndarray:
    """kernel [L?, in, out] + a @ b in fp32, back in the kernel's dtype (an adapter's update of one kernel)."""
    if delta is None:
        return kernel
    return (kernel.astype(np.float32) + np.matmul(delta.a, delta.b)).astype(kernel.dtype)


def export_adapter(src: str | Path, dst: str | Path, overwrite: bool = False, log: Callable[[str], None] = print):
    """`export-hf --adapter-only`: the LoRA adapter dir `src` (a LoRA run's OUTPUT/model) as a PEFT adapter dir
    for transformers: its tensors as they are (PEFT's names), base_model_name_or_path the base's Hugging Face
    name (the `_name_or_path` of the checkpoint it was converted from) or, unknown, the base model dir."""
    src, dst = Path(src).absolute(), Path(dst).absolute()
    if not is_adapter_only(src):
        raise ConfigError(
            f"--adapter-only: {src} is not a LoRA adapter dir (no {ADAPTER_CONFIG}, or a full model's config.json "
            "beside it); export-hf without --adapter-only writes a model dir as a Hugging Face checkpoint."
        )
    base = adapter_base(src, "its base_model_name_or_path must name the model dir it was trained on.")
    config, _ = read_model_dir_config(base)
    doc = read_adapter_config(src)
    n = len(read_adapter(src, config))  # every tensor is checked to fit the base before anything is written
    doc["base_model_name_or_path"] = (read_source_config(base) or {}).get("_name_or_path") or str(base)
    with atomic_directory(dst, "hf-export", sources=(src, base), overwrite=overwrite, warn=log) as tmp:
        shutil.copyfile(src / ADAPTER_WEIGHTS, tmp / ADAPTER_WEIGHTS)
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(doc, indent=2) + "\n")
    log(f"exported the LoRA adapter {src} ({n} kernels of {base}) -> {dst} for {doc['base_model_name_or_path']}")
    return dst


def _join(parts, arrays) -> np.ndarray:
    """One HF tensor from its parts (a single rule, or v1's q/k/v row blocks of c_attn)."""
    pieces = [to_hf(rule, x) for rule, x in zip(parts, arrays)]
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=0)


def _hf_config(src: Path, config, stored) -> dict:
    """The source's own config.json when it describes this model (unchanged, so the export is the original
    checkpoint's format to the byte), else one built from our config."""
    source = read_source_config(src)
    if source is not None:
        try:
            if from_hf_config(source) == config:
                return source
        except ConfigError:
            pass
    hf = to_hf_config(config)
    dtype = "bfloat16" if any(d == ml_dtypes.bfloat16 for _, d in stored.values()) else "float32"
    if config.is_v1:
        hf["bf16"], hf["fp32"] = dtype == "bfloat16", dtype == "float32"
    else:
        hf["torch_dtype"] = dtype
    return hf
