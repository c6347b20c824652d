"""The one home of every user-visible choice: the allowed values, ranges and defaults that the command line
(`cli/`), the validators of requests and configs (`generation/options.py`, `jobs/`, `training/`, `config.py`)
and the code that acts on them (`model/`, `audio/`) share.

Each of them reads its list, range or default from here, so a flag's `choices=` and `default=`, the check on a
request line or a config key, and the code's own check can never drift apart (tests/test_choices.py compares
the command line's flags with this module). It sits at the bottom of the import order: it imports nothing of
the package and never jax, so `--help` and config validation stay instant.
"""

from __future__ import annotations

import os
from typing import NamedTuple

# ---- model variants ------------------------------------------------------------------------------------------
QWEN2_AUDIO = "qwen2_audio"
QWEN_AUDIO_V1 = "qwen_audio_v1"
VARIANTS = (QWEN2_AUDIO, QWEN_AUDIO_V1)  # a config's model_type, a tokenizer's variant, `eval --variant`

# ---- runtime -------------------------------------------------------------------------------------------------
DTYPES = ("float32", "bfloat16")  # compute dtypes (`--dtype`: default by backend; training's compute_dtype)
DEFAULT_TRAIN_COMPUTE_DTYPE = "float32"
CONVERT_DTYPES = ("auto", "bfloat16", "float32")  # `convert --dtype`: auto keeps each tensor's source dtype
DEFAULT_CONVERT_DTYPE = "auto"
# "auto": cuDNN flash attention on GPU where it applies, the XLA einsum path elsewhere (model/attention.py).
ATTENTION_IMPLEMENTATIONS = ("auto", "xla", "dot_product", "cudnn")
DEFAULT_ATTENTION = "auto"
QUANTIZE_MODES = ("none", "int8")  # weight-only int8 for the decoder's linear layers and the lm_head
DEFAULT_QUANTIZE = "none"
KV_CACHE_DTYPES = ("auto", "int8")  # "auto": the compute dtype
DEFAULT_KV_CACHE_DTYPE = "auto"

# ---- audio ---------------------------------------------------------------------------------------------------
LONG_AUDIO_POLICIES = ("truncate", "chunk")  # clips over 30 s: keep the first 30 s (reference) or split them
DEFAULT_LONG_AUDIO = "truncate"

# ---- jobs ----------------------------------------------------------------------------------------------------
EVAL_TASKS = ("asr", "s2tt", "ser", "vsc", "aqa", "caption")  # `eval --task`; each has a preset in jobs/tasks.py
DEFAULT_BATCH_SIZE = 8  # decode slots (generate, eval, demo), rows per step (score), examples per micro-batch
MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    """Threads preparing requests (audio, features, tokens) ahead of the device: one per CPU core, at most 8."""
    return max(1, min(MAX_DEFAULT_WORKERS, os.cpu_count() or 2))


# ---- training ------------------------------------------------------------------------------------------------
# none: save everything; full: save only each layer's input (recompute the layer); dots: save matmul outputs;
# dots_no_batch: save matmul outputs without batch dimensions (the weights-side products).
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
DEFAULT_REMAT = "none"
# DPO reference: "model" keeps a frozen copy of the initial policy; "precomputed" caches its log-probs.
REFERENCE_MODES = ("model", "precomputed")
# LoRA training's frozen base (`lora.base_dtype`): int8 is QLoRA's (weight-only int8 decoder kernels and lm_head).
LORA_BASE_DTYPES = ("float32", "bfloat16", "int8")
DEFAULT_LORA_BASE_DTYPE = "bfloat16"
DEFAULT_REFERENCE_MODE = "model"

# ---- ranges --------------------------------------------------------------------------------------------------
# Every value becomes a 32-bit device value (int32 budgets and top-k, uint32 seeds, float32 sampling values), so
# the ranges stop there: a larger one would pass and overflow on the device, on every --resume again.
INT32_MAX = 2**31 - 1
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32: a smaller penalty would become 0


class Range(NamedTuple):
    """Allowed values of a number: `kind` (int or float) between `low` and `high`, each end closed unless
    said open; `text` says it in the messages ("in [1, 2147483647]")."""

    kind: type
    low: float
    high: float
    text: str
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below


POSITIVE_INT = Range(int, 1, INT32_MAX, f"in [1, {INT32_MAX}]")
NONNEG_INT = Range(int, 0, INT32_MAX, f"in [0, {INT32_MAX}]")
NONNEG_FLOAT = Range(float, 0, FLOAT32_MAX, "in [0, 3.4e38]")
POSITIVE_FLOAT = Range(float, FLOAT32_TINY, FLOAT32_MAX, "in [1.2e-38, 3.4e38]")
PROBABILITY = Range(float, 0, 1, "in (0, 1]", low_open=True)
SEED = Range(int, 0, 2**32, "in [0, 2**32)", high_open=True)

# ---- generation ----------------------------------------------------------------------------------------------
DEFAULT_MAX_NEW_TOKENS = 256
# The settings a request line may override, each with its range, its default and what the default means.
SAMPLING_RANGES = {
    "max_new_tokens": POSITIVE_INT,
    "min_new_tokens": NONNEG_INT,
    "temperature": NONNEG_FLOAT,
    "top_k": NONNEG_INT,
    "top_p": PROBABILITY,
    "repetition_penalty": POSITIVE_FLOAT,
    "seed": SEED,
}
SAMPLING_DEFAULTS = {
    "max_new_tokens": DEFAULT_MAX_NEW_TOKENS,
    "min_new_tokens": 0,
    "temperature": 0.0,
    "top_k": 0,
    "top_p": 1.0,
    "repetition_penalty": 1.0,
    "seed": 0,
}
SAMPLING_NOTES = {"temperature": "0 = greedy", "top_k": "0 = off", "top_p": "1 = off", "repetition_penalty": "1 = off"}
PER_REQUEST_KEYS = tuple(SAMPLING_RANGES)  # request-line keys that override the job's options for that request
STOP_ID = NONNEG_INT
DEMO_MAX_NEW_TOKENS = 24  # `demo` over the bundled clips (their answers are short)
DEMO_ASK_MAX_NEW_TOKENS = 48  # `demo --audio FILE`

# ---- serving (`serve`, qwen_audio_jax/serving/) ------------------------------------------------------------------
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_AUDIO_SECONDS = 600.0  # longer audio is refused (400); what is kept of it follows --long-audio
DEFAULT_MAX_AUDIO_CLIPS = 8  # audio inputs in one request, at most
DEFAULT_MAX_BODY_BYTES = 64 * 2**20  # a request body over this is refused (413)
DEFAULT_MAX_QUEUE = 256  # requests waiting for a decode slot, at most (more: 503)
DEFAULT_DRAIN_SECONDS = 30.0  # SIGTERM: how long requests in flight may take to finish
DEFAULT_URL_FETCH_TIMEOUT = 10.0  # seconds for an http(s) audio_url (only with --allow-url-fetch)
