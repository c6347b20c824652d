"""The training input pipeline: grain over validated examples -> bucketed numpy batches, checkpointable.

    indices -> shuffle(seed), reshuffled every epoch -> this process's slice -> prepare (audio + tokens)
            -> batches of B examples -> A of them stacked per step, padded to shared (length, clips, frames)
               buckets -> TrainBatch arrays

Everything is a deterministic function of (seed, position), and the iterator state is one integer, saved
with each checkpoint, so a resumed run sees exactly the batches an uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import grain
import numpy as np

from qwen_audio_jax.batching.buckets import Buckets
from qwen_audio_jax.text.processor import PreparedRequest, Processor

# Batch arrays: [A, K, B, ...] (pair axis 2), pair_active [A, B]; clips [A, C, ...] gathered along C, replicated
# (batching/device_batch.py `place`): the device-batch layout of training and the DPO reference pass.
PAIR_AXIS = {"tokens": 2, "mask": 2, "completion_mask": 2, "ref_logps": 2, "pair_active": 1}
CLIP_AXIS = {"mel": 1, "mel_lengths": 1}


@dataclasses.dataclass
class PipelineConfig:
    batch_pairs: int  # examples per micro-batch on this process
    grad_accum: int = 1
    seed: int = 0
    num_threads: int = 2  # grain reader threads preparing examples (audio loading + log-mel)
    completion_suffix: str = ""  # appended to every completion (the end-of-turn token)


class ExamplePreparer:
    """index -> [chosen PreparedRequest, rejected PreparedRequest (DPO only)], the clips shared."""

    def __init__(self, examples: Sequence, processor: Processor, preference: bool, completion_suffix: str = ""):
        self.examples, self.processor, self.preference = examples, processor, preference
        self.suffix = completion_suffix  # the end-of-turn token, so the policy learns to stop

    def __call__(self, index: int) -> tuple[int, list[PreparedRequest]]:
        ex = self.examples[int(index)]
        completions = [ex.chosen, ex.rejected] if self.preference else [ex.chosen]
        completions = [c + self.suffix for c in completions]
        return int(index), self.processor.prepare_completions(ex.request, completions)


def make_iterator(
    examples: Sequence,
    processor: Processor,
    cfg: PipelineConfig,
    total_steps: int,
    *,
    preference: bool,
    process_index: int = 0,
    process_count: int = 1,
):
    """A grain iterator over this process's micro-batches (lists of (index, prepared)), with get_state() and
    set_state().

    The shuffled sequence is cut into GLOBAL batches of `batch_pairs * process_count` examples and each process
    prepares its own contiguous slice, so the global batch (and every metric) is the same whatever the number
    of processes; only audio loading is split.
    """
    n = len(examples)
    global_pairs = cfg.batch_pairs * process_count
    epochs = math.ceil(total_steps * cfg.grad_accum * global_pairs / n) + 1
    ds = grain.MapDataset.range(n).shuffle(seed=cfg.seed).repeat(epochs)
    ds = ds.batch(global_pairs, drop_remainder=True, batch_fn=list)
    prepare = ExamplePreparer(examples, processor, preference, cfg.completion_suffix)
    mine = slice(process_index * cfg.batch_pairs, (process_index + 1) * cfg.batch_pairs)
    ds = ds.map(lambda indices: [prepare(i) for i in indices[mine]])
    options = grain.ReadOptions(num_threads=cfg.num_threads, prefetch_buffer_size=2 * cfg.grad_accum)
    return ds.to_iter_dataset(options).__iter__()


class BatchShape(NamedTuple):
    """Bucketed sizes shared by every micro-batch of a step (and, multi-host, by every process: agreed with
    `DeviceBatch.agree`, which returns the same named type)."""

    length: int
    clips: int
    frames: int
    completion: int  # completion tokens per row (the positions the lm_head runs on)


def batch_shape(micro_batches: list[list[tuple[int, list[PreparedRequest]]]], buckets: Buckets) -> BatchShape:
    longest = max(p.num_tokens for mb in micro_batches for _, pair in mb for p in pair)
    clips = max(sum(len(pair[0].mel_lengths) for _, pair in mb) for mb in micro_batches)
    lengths = [m for mb in micro_batches for _, pair in mb for m in pair[0].mel_lengths]
    completion = max(sum(p.completion_mask) for mb in micro_batches for _, pair in mb for p in pair)
    return BatchShape(
        completion=buckets.completion_length(completion),
        length=buckets.prompt_length(longest),
        clips=buckets.num_clips(clips),
        frames=buckets.mel_frames(max(lengths)) if lengths else 0,
    )


def collate_step(
    micro_batches, shape: BatchShape, pad_id: int, n_mels: int, ref_table: dict | None = None, preference: bool = True
) -> dict[str, np.ndarray]:
    """Stacks A micro-batches of B examples into arrays [A, K, B, T] (K = 2: chosen, rejected; K = 1 for SFT),
    right-padded; clips [A, C, M, F] in pair order, once per pair (chosen and rejected share them)."""
    a, b = len(micro_batches), len(micro_batches[0])
    k_rows = 2 if preference else 1
    t = shape.length
    out = {
        "tokens": np.full((a, k_rows, b, t), pad_id, np.int32),
        "mask": np.zeros((a, k_rows, b, t), np.int32),
        "completion_mask": np.zeros((a, k_rows, b, t), np.int32),
        "pair_active": np.ones((a, b), np.float32),
    }
    if shape.clips:
        out["mel"] = np.zeros((a, shape.clips, n_mels, shape.frames), np.float32)
        out["mel_lengths"] = np.zeros((a, shape.clips), np.int32)
    if ref_table is not None:
        out["ref_logps"] = np.zeros((a, k_rows, b), np.float32)
    for i, mb in enumerate(micro_batches):
        c = 0
        for j, (index, pair) in enumerate(mb):
            for k, prepared in enumerate(pair):
                n = prepared.num_tokens
                out["tokens"][i, k, j, :n] = prepared.token_ids
                out["mask"][i, k, j, :n] = 1
                out["completion_mask"][i, k, j, :n] = prepared.completion_mask
                if ref_table is not None:
                    out["ref_logps"][i, k, j] = ref_table[index][k]
            for mel, length in zip(pair[0].mels, pair[0].mel_lengths):  # clips once per pair (shared)
                out["mel"][i, c] = mel[:, : shape.frames]
                out["mel_lengths"][i, c] = length
                c += 1
    return out


def pad_pairs(arrays: dict, pairs: int, pad_id: int) -> dict:
    """Adds inactive empty pairs (all padding, mask 0, no audio slots) so the batch divides the mesh's batch
    axes. Empty rows matter: a copied row's audio slots would shift every later row's clips."""
    a, b = arrays["pair_active"].shape
    if pairs == b:
        return arrays
    extra = pairs - b
    out = dict(arrays)
    out["pair_active"] = np.concatenate([arrays["pair_active"], np.zeros((a, extra), np.float32)], axis=1)
    for key, fill in (("tokens", pad_id), ("mask", 0), ("completion_mask", 0), ("ref_logps", 0)):
        if key in arrays:  # [A, K, B, ...]: pad the pair axis
            x = arrays[key]
            out[key] = np.concatenate([x, np.full((*x.shape[:2], extra, *x.shape[3:]), fill, x.dtype)], axis=2)
    return out
