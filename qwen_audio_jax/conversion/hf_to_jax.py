"""Hugging Face checkpoint (Qwen2-Audio or Qwen-Audio v1) -> our model directory (config.json + Orbax params +
tokenizer/preprocessor files).

Strict accounting (nanoGPT's `from_pretrained` habit): before any data is read, every source tensor must be
claimed by a rule, every target param must have its sources, and every shape and dtype must match what
`config.json` implies. Then tensors stream one at a time into one stacked group at a time, and each group is
written to Orbax before the next is built, so peak memory is about one group.

Lossless by default (docs/decisions.md §13): `dtype="auto"` keeps each tensor's source
dtype (the hub's bf16 stays bf16, an fp32 fine-tune stays fp32), so convert -> export-hf is bit-exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import ml_dtypes
import numpy as np
from flax import traverse_util
from tqdm import tqdm

from qwen_audio_jax.checkpoint.model_dir import (
    FORMAT,
    ParamWriter,
    copy_aux_files,
    read_config_json,
    write_config,
)
from qwen_audio_jax.checkpoint.safe_write import atomic_directory, deferred_interrupt
from qwen_audio_jax.choices import CONVERT_DTYPES
from qwen_audio_jax.config import ModelConfig
from qwen_audio_jax.conversion.hf_config import from_hf_config
from qwen_audio_jax.conversion.name_map import ParamRule, hf_shape, rules_for, to_ours
from qwen_audio_jax.errors import CheckpointError, ConfigError
from qwen_audio_jax.model.params import abstract_params

DTYPES = {"bfloat16": np.dtype(ml_dtypes.bfloat16), "float32": np.dtype(np.float32)}
DTYPE_CHOICES = CONVERT_DTYPES  # "auto" keeps each tensor's source dtype
_FLOAT_KINDS = ("f", "V")  # ml_dtypes.bfloat16 reports kind "V"


def read_hf_config(src: Path) -> tuple[ModelConfig, dict]:
    """(our config, the source's own config.json dict) of an HF checkpoint directory."""
    path, doc = read_config_json(src, "a Hugging Face Qwen2-Audio or Qwen-Audio checkpoint directory")
    if doc.get("format") == FORMAT:
        raise ConfigError(f"{src} is already a qwen-audio-jax model dir (use export-hf to go back to HF).")
    return from_hf_config(doc, source=str(path)), doc


def plan_conversion(source, config: ModelConfig) -> list[ParamRule]:
    """Validates names, shapes and dtypes of the whole checkpoint against the config; returns the rules."""
    expected = traverse_util.flatten_dict(abstract_params(config), sep="/")
    rules = rules_for(config)
    assert {r.target for r in rules} == set(expected), "name map and model params disagree"
    available = set(source.names())
    claimed: set[str] = set()
    kind = "Qwen-Audio" if config.is_v1 else "Qwen2-Audio"
    for rule in rules:
        shape = expected[rule.target].shape
        per_tensor = shape[1:] if rule.num_layers is not None else shape
        want = hf_shape(rule, per_tensor)
        for name in rule.source_names():
            if name not in available:
                raise CheckpointError(f"{source.directory}: tensor {name!r} is missing from the checkpoint.")
            dtype, got = source.info(name)
            if tuple(got) != want:
                raise CheckpointError(
                    f"{source.location(name)}: tensor {name!r} has shape {tuple(got)}, but config.json implies {want}."
                )
            if dtype.kind not in _FLOAT_KINDS:
                raise CheckpointError(f"{source.location(name)}: tensor {name!r} has dtype {dtype}, expected a float.")
            claimed.add(name)
    unused = sorted(available - claimed)
    if unused:
        raise CheckpointError(
            f"{source.directory}: {len(unused)} tensor(s) are not used by the model (e.g. {unused[0]!r}); "
            f"is this a {kind} checkpoint?"
        )
    return rules


def _group_dtype(source, rule: ParamRule, dtype: np.dtype | None) -> np.dtype:
    """The stored dtype of one param group: `dtype`, or with None the sources' own (the widest if mixed)."""
    if dtype is not None:
        return dtype
    dtypes = {np.dtype(source.info(name)[0]) for name in rule.source_names()}
    return dtypes.pop() if len(dtypes) == 1 else np.dtype(np.float32)


def iter_params(
    source, config: ModelConfig, dtype: np.dtype | None, rules: list[ParamRule] | None = None
) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (our path, array) one param group at a time (dtype None keeps the source's); stacked groups are
    filled layer by layer."""
    rules = plan_conversion(source, config) if rules is None else rules
    expected = traverse_util.flatten_dict(abstract_params(config), sep="/")
    for rule in rules:
        # One output buffer per group, filled in place: peak memory is the group plus one source tensor
        # (a transpose-then-astype chain would hold three copies of the largest tensor).
        out = np.empty(expected[rule.target].shape, _group_dtype(source, rule, dtype))
        if rule.num_layers is None:
            out[...] = to_ours(rule, source.read(rule.source))
        else:
            for i, name in enumerate(rule.source_names()):
                out[i] = to_ours(rule, source.read(name))
        yield rule.target, out
        del out


def params_from_hf(source, config: ModelConfig, dtype: str = "float32") -> dict:
    """In-memory conversion (tests, small models): a nested dict of numpy arrays ("auto" keeps dtypes)."""
    flat = {tuple(p.split("/")): x for p, x in iter_params(source, config, DTYPES.get(dtype))}
    return traverse_util.unflatten_dict(flat)


def convert(
    src: str | Path,
    dst: str | Path,
    dtype: str = "auto",
    overwrite: bool = False,
    allow_pickle: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Path:
    """Converts an HF Qwen2-Audio / Qwen-Audio directory into our model dir at `dst` (atomically)."""
    from qwen_audio_jax.conversion.hf_checkpoint import HFCheckpoint

    if dtype not in DTYPE_CHOICES:
        raise ConfigError(f"--dtype {dtype!r} is not supported; choose one of {', '.join(DTYPE_CHOICES)}.")
    src, dst = Path(src).absolute(), Path(dst).absolute()
    if not src.is_dir():
        raise CheckpointError(f"{src}: not a directory; pass the Hugging Face checkpoint folder.")
    config, source_config = read_hf_config(src)
    source = HFCheckpoint(src, allow_pickle=allow_pickle, v1=config.is_v1)
    rules = plan_conversion(source, config)
    start, total, stored = time.perf_counter(), 0, set()
    with atomic_directory(dst, "model", sources=(src,), overwrite=overwrite, warn=log) as tmp:
        writer = ParamWriter(tmp)
        bar = tqdm(total=len(rules), desc="convert", unit="param", disable=not progress)
        for path, array in iter_params(source, config, DTYPES.get(dtype), rules):
            with deferred_interrupt():  # Orbax finishes a group in its own threads: Ctrl-C waits for it
                writer.add(path, array)
            total += array.nbytes
            stored.add(str(array.dtype))
            del array
            bar.update()
        bar.close()
        with deferred_interrupt():
            writer.finalize()
        write_config(tmp, config, stored.pop() if len(stored) == 1 else "mixed", source_config)
        copied = copy_aux_files(src, tmp)
    seconds = time.perf_counter() - start
    log(
        f"converted {src} -> {dst}: {len(rules)} params, {total / 1e9:.2f} GB "
        f"({'source dtypes' if dtype == 'auto' else dtype}) in {seconds:.1f} s; "
        f"copied {', '.join(copied) if copied else 'no tokenizer files'}"
    )
    return dst
