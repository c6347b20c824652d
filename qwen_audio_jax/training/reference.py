"""Precomputed reference log-probs for DPO (`dpo --precompute-ref`, then `reference.mode: precomputed`).

One pass of the reference model over the validated pairs writes `reference_logps.json` in the run dir:
{"fingerprint": data, "model": reference identity, "logps": {example index: [chosen, rejected]}}. Training then
needs no reference weights in memory. The file is keyed by the data fingerprint (ids, token ids, clip lengths)
and the reference model's identity, so a changed dataset or model is refused instead of silently reused.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import jax
from tqdm import tqdm

from qwen_audio_jax.batching.buckets import Buckets
from qwen_audio_jax.batching.device_batch import DeviceBatch
from qwen_audio_jax.errors import ConfigError
from qwen_audio_jax.model.logprobs import completion_logprobs
from qwen_audio_jax.training.pipeline import CLIP_AXIS, PAIR_AXIS, ExamplePreparer, batch_shape, collate_step, pad_pairs

FILE = "reference_logps.json"


def model_identity(model_dir: str | Path) -> str:
    """Hash of the model dir's param files (names, sizes, mtimes) and config: cheap, changes with the weights."""
    root = Path(model_dir)
    h = hashlib.sha256((root / "config.json").read_bytes())
    for f in sorted((root / "params").rglob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


def reference_model_dir(cfg) -> str:
    return cfg.reference.model or cfg.model


def _reference_logps(module, params, tokens, mask, completion_mask, mel, mel_lengths, *, completion: int):
    """[K, B, T] pair rows (chosen, rejected) -> [K*B] summed completion log-probs, each clip encoded once."""
    rows = lambda x: x[0].reshape(-1, x.shape[-1])  # noqa: E731  [1, K, B, T] -> [K*B, T]
    out = completion_logprobs(
        module,
        params,
        rows(tokens),
        rows(mask),
        rows(completion_mask),
        None if mel is None else mel[0],
        None if mel_lengths is None else mel_lengths[0],
        clip_repeats=2,
        max_completion=completion,
        right_padded=True,
    )
    return out.sum_logprobs


def compute_reference_table(
    module,
    params,
    examples,
    processor,
    placement,
    pad_id: int,
    batch_size: int,
    completion_suffix: str = "",
    progress: bool = True,
) -> dict[int, list[float]]:
    """{example index: [log p_ref(chosen), log p_ref(rejected)]} over all examples, in order (the same
    sequences, suffix included, that training scores), on every process.

    Through the device-batch protocol: each global batch of `batch_size` pairs is split over the processes,
    every process prepares its slice, the shapes are agreed, and the results come back to all."""
    batch = DeviceBatch(placement)
    me, procs = batch.process
    local = -(-batch_size // procs)
    padded = placement.round_batch(local * procs) // procs
    prepare = ExamplePreparer(examples, processor, preference=True, completion_suffix=completion_suffix)
    buckets = Buckets()
    fns: dict[int, object] = {}
    table: dict[int, list[float]] = {}
    step = local * procs
    for start in tqdm(range(0, len(examples), step), desc="reference", disable=not progress):
        mine = range(start + me * local, min(start + (me + 1) * local, len(examples)))
        micro = [prepare(i) for i in mine] or [prepare(0)]  # a process past the end scores a filler pair
        shape = batch.agree(batch_shape([micro], buckets))
        arrays = pad_pairs(collate_step([micro], shape, pad_id, processor.n_mels), padded, pad_id)
        placed = batch.place(arrays, PAIR_AXIS, CLIP_AXIS)
        if shape.completion not in fns:
            fns[shape.completion] = jax.jit(functools.partial(_reference_logps, module, completion=shape.completion))
        with placement.activate():
            out = fns[shape.completion](
                params,
                placed["tokens"],
                placed["mask"],
                placed["completion_mask"],
                placed.get("mel"),
                placed.get("mel_lengths"),
            )
        logps = batch.fetch(out).reshape(2, procs, padded)
        for q in range(procs):
            for j in range(padded):
                index = start + q * local + j
                if j < local and index < min(start + step, len(examples)):
                    table[index] = [float(logps[0, q, j]), float(logps[1, q, j])]
    return table


def save_reference_table(out_dir: Path, table: dict, fingerprint: str, identity: str) -> Path:
    path = Path(out_dir) / FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"fingerprint": fingerprint, "model": identity, "logps": {str(k): v for k, v in table.items()}}
    path.write_text(json.dumps(doc))
    return path


def load_reference_table(out_dir: Path, fingerprint: str, cfg) -> dict[int, list[float]]:
    path = Path(out_dir) / FILE
    if not path.is_file():
        raise ConfigError(
            f"{path} not found; run `qwen-audio-jax dpo --config ... --precompute-ref` first "
            "(or set reference.mode: model)."
        )
    doc = json.loads(path.read_text())
    if doc.get("fingerprint") != fingerprint:
        raise ConfigError(f"{path} was computed for different data; re-run with --precompute-ref.")
    if doc.get("model") != model_identity(reference_model_dir(cfg)):
        raise ConfigError(f"{path} was computed with a different reference model; re-run with --precompute-ref.")
    return {int(k): v for k, v in doc["logps"].items()}
