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
from qwen_audio_jax.errors import ConfigError
from qwen_audio_jax.model.logprobs import completion_logprobs
from qwen_audio_jax.training.pipeline import ExamplePreparer, batch_shape, collate_step

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
    sequences, suffix included, that training scores)."""
    prepare = ExamplePreparer(examples, processor, preference=True, completion_suffix=completion_suffix)
    buckets = Buckets()
    fns: dict[int, object] = {}
    table: dict[int, list[float]] = {}
    for start in tqdm(range(0, len(examples), batch_size), desc="reference", disable=not progress):
        micro = [prepare(i) for i in range(start, min(start + batch_size, len(examples)))]
        shape = batch_shape([micro], buckets)
        arrays = collate_step([micro], shape, pad_id, processor.n_mels)
        if shape.completion not in fns:
            fns[shape.completion] = jax.jit(
                functools.partial(completion_logprobs, module, clip_repeats=2, max_completion=shape.completion)
            )
        fn = fns[shape.completion]
        rows = lambda x: placement.put(x[0].reshape(-1, x.shape[-1]))  # noqa: E731  [K, B, T] -> [K*B, T]
        mel = arrays.get("mel")
        out = fn(
            params,
            rows(arrays["tokens"]),
            rows(arrays["mask"]),
            rows(arrays["completion_mask"]),
            None if mel is None else placement.put_replicated(mel[0]),
            None if mel is None else placement.put_replicated(arrays["mel_lengths"][0]),
        )
        logps = placement.to_host(out.sum_logprobs).reshape(2, -1)
        for j, (index, _) in enumerate(micro):
            table[index] = [float(logps[0, j]), float(logps[1, j])]
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
