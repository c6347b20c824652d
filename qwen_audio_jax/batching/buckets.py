"""Static-shape buckets, shared by generation, scoring and training (docs/decisions.md §5): every device call
is padded to a point of a small grid, so a job over any corpus compiles a bounded number of programs.

Inference (generate, score, eval) uses coarse grids, since each point is a program to compile on the user's
first run: one clip per encoder call at `inference_frames`, prompt chunks at `chunks` (longer prompts run in
several chunks), scored sequences at `score_lengths`. Training batches many rows per call and uses the finer
`lengths` / `frames` grids (less padding; a run compiles its buckets once).

Mel frames (docs/decisions.md §6): a clip of L valid frames gives the reference's valid
encoder outputs from any prefix of A >= L + 2 frames (the conv stem reads one frame past the last valid conv2
input, plus conv2's own right neighbour), so a batch is encoded at the smallest bucket >= max(L) + 2 instead
of always 3000.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from qwen_audio_jax.errors import PromptError
from qwen_audio_jax.text.processor import ModelInputs


@dataclasses.dataclass(frozen=True)
class Buckets:
    # Prompt lengths: steps of 32 up to 320, then 1/8 to 1/5 apart. Prefill is compute-bound, so padding costs
    # its share of the decoder's work (a 384 bucket for 8 prompts of 130-279 tokens: 1.4 s; 288: 0.9 s).
    lengths: tuple[int, ...] = (32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 384, 448, 512, 576, 640, 768, 896,
                                1024, 1280, 1536, 2048, 2560, 3072, 4096, 5120, 6144, 8192)  # fmt: skip
    clips: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256)
    # Completion tokens per row (scoring / training compute the lm_head on these positions only).
    completions: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
    # Multiples of 4 (conv stride 2, then pool 2); finer at the short end, where most clips are.
    frames: tuple[int, ...] = (128, 256, 384, 512, 640, 768, 1024, 1280, 1536, 2048, 2560, 3000)
    # Inference: a clip is encoded alone at one of these (one program each).
    inference_frames: tuple[int, ...] = (256, 512, 1024, 2048, 3000)
    # Generation: prompt chunks (one prefill program each); the last is the chunk size of long prompts.
    chunks: tuple[int, ...] = (64, 128, 256, 384, 512, 768, 1024)
    # Scoring: whole sequences (prompt + completion), one program each.
    score_lengths: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096, 8192)

    def __post_init__(self):
        for frames in (self.frames, self.inference_frames):
            if any(f % 4 or f > 3000 for f in frames) or 3000 not in frames:
                raise ValueError("mel frame buckets must be multiples of 4, at most 3000, and include 3000")

    def prompt_length(self, n: int) -> int:
        return _smallest(self.lengths, n, f"a prompt of {n} tokens")

    def chunk_length(self, n: int) -> int:
        """The prefill bucket of a chunk of n tokens (n at most the largest chunk)."""
        return _smallest(self.chunks, n, f"a prompt chunk of {n} tokens")

    def score_length(self, n: int) -> int:
        return _smallest(self.score_lengths, n, f"a scored sequence of {n} tokens")

    def inference_mel_frames(self, length: int) -> int:
        """The encoder bucket of one clip of `length` valid frames at inference (>= length + 2, or 3000)."""
        return _exact_frames(self.inference_frames, length)

    def completion_length(self, n: int) -> int:
        return _smallest(self.completions, n, f"a completion of {n} tokens")

    def num_clips(self, n: int) -> int:
        return 0 if n == 0 else _smallest(self.clips, n, f"{n} audio clips in one batch")

    def mel_frames(self, longest: int) -> int:
        """Smallest training frame bucket that is exact for a clip of `longest` valid frames (>= longest + 2)."""
        return _exact_frames(self.frames, longest)


def _exact_frames(options: tuple[int, ...], longest: int) -> int:
    for b in options:
        if b >= longest + 2:
            return b
    return 3000  # the reference's own length: exact by definition


def _smallest(options: tuple[int, ...], n: int, what: str) -> int:
    for b in options:
        if b >= n:
            return b
    raise PromptError(f"{what} exceed(s) the largest bucket ({options[-1]}).")


@dataclasses.dataclass
class BucketedBatch:
    """Host arrays at bucket shapes. rows_active marks real requests (the rest are padding rows)."""

    tokens: np.ndarray  # [B, T] int32
    attention_mask: np.ndarray  # [B, T] int32
    mel: np.ndarray | None  # [C, M, A] float32
    mel_lengths: np.ndarray | None  # [C] int32 (0 for padding clips: they produce no audio tokens)
    rows_active: np.ndarray  # [B] bool
    num_real: int
    completion_mask: np.ndarray | None = None  # [B, T] int32 (scoring and training)


def bucket_sizes(inputs: ModelInputs | None, buckets: Buckets) -> tuple[int, int, int]:
    """(length, clips, frames) buckets of a batch; (smallest length, 0, 0) for no batch at all."""
    if inputs is None:
        return buckets.lengths[0], 0, 0
    t = buckets.prompt_length(inputs.tokens.shape[1])
    if inputs.mel is None or not len(inputs.mel):
        return t, 0, 0
    return t, buckets.num_clips(len(inputs.mel)), buckets.mel_frames(int(inputs.mel_lengths.max()))


def to_buckets(
    inputs: ModelInputs | None,
    buckets: Buckets,
    batch_size: int,
    pad_id: int,
    sizes: tuple[int, int, int] | None = None,
    n_mels: int = 128,
    padding_side: str = "left",
) -> BucketedBatch:
    """Pads a ModelInputs collated with `padding_side` to (batch_size, length bucket) and its clips to
    (clip, frame) buckets.

    sizes: explicit (length, clips, frames), at least the batch's own buckets (multi-host: the max over
    processes, which must all build the same shapes). inputs None: an all-padding batch of those sizes.
    """
    tb, cb, a = sizes or bucket_sizes(inputs, buckets)
    b, t = (0, 0) if inputs is None else inputs.tokens.shape
    if b > batch_size:
        raise ValueError(f"batch of {b} requests exceeds batch_size {batch_size}")
    tokens = np.full((batch_size, tb), pad_id, np.int32)
    mask = np.zeros((batch_size, tb), np.int32)
    active = np.zeros(batch_size, bool)
    active[:b] = True
    completion = None
    if b:
        # Left padding keeps real tokens right-aligned; right padding keeps them at 0..n-1.
        cols = slice(tb - t, tb) if padding_side == "left" else slice(0, t)
        tokens[:b, cols] = inputs.tokens
        mask[:b, cols] = inputs.attention_mask
        if inputs.completion_mask is not None:
            completion = np.zeros((batch_size, tb), np.int32)
            completion[:b, cols] = inputs.completion_mask
    mel = lengths = None
    if cb:
        if inputs is not None and inputs.mel is not None:
            n_mels = inputs.mel.shape[1]
        mel = np.zeros((cb, n_mels, a), np.float32)
        lengths = np.zeros(cb, np.int32)
        if inputs is not None and inputs.mel is not None and len(inputs.mel):
            c = len(inputs.mel)
            mel[:c] = inputs.mel[:, :, :a]
            lengths[:c] = inputs.mel_lengths
    return BucketedBatch(tokens, mask, mel, lengths, active, b, completion)
