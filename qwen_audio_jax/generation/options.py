"""What to generate: job-wide options, and the per-request overrides a request line may carry.

Every value is checked once, here, with one sentence naming the value and the allowed range (the command line
and request lines both come through `GenerationOptions` / `RequestOptions.from_record`). Sampling values and
token budgets become traced per-row values on the device: changing them never recompiles.
"""

from __future__ import annotations

import dataclasses
import math
import zlib

from qwen_audio_jax.errors import ConfigError, PromptError

# Request-line keys that override the job's options for that request.
PER_REQUEST_KEYS = ("max_new_tokens", "min_new_tokens", "temperature", "top_k", "top_p", "repetition_penalty", "seed")


def _check(name: str, value, kind: type, ok, allowed: str, error=ConfigError):
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise error(f"{name} must be an integer {allowed}, got {value!r}.")
    if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise error(f"{name} must be a number {allowed}, got {value!r}.")
    if kind is float and not math.isfinite(value):
        raise error(f"{name} must be a finite number {allowed}, got {value!r}.")
    if not ok(value):
        raise error(f"{name}={value!r} is out of range: it must be {allowed}.")
    return value


# Every value becomes a 32-bit device value (int32 budgets and top-k, uint32 seeds, float32 sampling values), so
# the ranges stop there: a larger one would pass here and overflow on the device, on every --resume again.
INT32_MAX = 2**31 - 1
FLOAT32_MAX = 3.4028234663852886e38
FLOAT32_TINY = 1.1754943508222875e-38  # the smallest normal float32: a smaller penalty would become 0


def validate_sampling(values: dict, error=ConfigError, prefix: str = "") -> None:
    """Checks each present key of PER_REQUEST_KEYS; `prefix` names where the value came from."""
    rules = {
        "max_new_tokens": (int, lambda v: 1 <= v <= INT32_MAX, f"in [1, {INT32_MAX}]"),
        "min_new_tokens": (int, lambda v: 0 <= v <= INT32_MAX, f"in [0, {INT32_MAX}]"),
        "temperature": (float, lambda v: 0 <= v <= FLOAT32_MAX, "in [0, 3.4e38] (0 = greedy)"),
        "top_k": (int, lambda v: 0 <= v <= INT32_MAX, f"in [0, {INT32_MAX}] (0 = off)"),
        "top_p": (float, lambda v: 0 < v <= 1, "in (0, 1] (1 = off)"),
        "repetition_penalty": (float, lambda v: FLOAT32_TINY <= v <= FLOAT32_MAX, "in [1.2e-38, 3.4e38] (1 = off)"),
        "seed": (int, lambda v: 0 <= v < 2**32, "in [0, 2**32)"),
    }
    for key, value in values.items():
        kind, ok, allowed = rules[key]
        _check(f"{prefix}{key}", value, kind, ok, allowed, error)


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    """Job-wide generation settings (each request may override the PER_REQUEST_KEYS)."""

    max_new_tokens: int = 128
    min_new_tokens: int = 0
    temperature: float = 0.0  # 0 = greedy (transformers' do_sample=False)
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1.0 = off
    repetition_penalty: float = 1.0  # 1.0 = off
    stop_ids: tuple[int, ...] = ()  # extra stop ids, on top of the model's (config.stop_ids)
    seed: int = 0
    return_logprobs: bool = False  # a static switch: one compiled program per setting

    def __post_init__(self):
        validate_sampling({k: getattr(self, k) for k in PER_REQUEST_KEYS})
        for i in self.stop_ids:
            _check("stop id", i, int, lambda v: 0 <= v <= INT32_MAX, f"in [0, {INT32_MAX}]")

    def for_request(self, record: dict | None, request_id: str = "") -> RequestOptions:
        """This request's settings: the job's, overridden by the record's own keys (validated)."""
        overrides = {k: record[k] for k in PER_REQUEST_KEYS if record and k in record}
        validate_sampling(overrides, PromptError, prefix="request key ")
        merged = {k: overrides.get(k, getattr(self, k)) for k in PER_REQUEST_KEYS}
        return RequestOptions(**merged, request_id=request_id)


@dataclasses.dataclass(frozen=True)
class RequestOptions:
    """One request's validated settings, as the engine puts them into its slot."""

    max_new_tokens: int
    min_new_tokens: int
    temperature: float
    top_k: int
    top_p: float
    repetition_penalty: float
    seed: int
    request_id: str = ""

    @property
    def sampling_row(self) -> tuple[float, int, float, float, int]:
        return (
            float(self.temperature),
            int(self.top_k),
            float(self.top_p),
            float(self.repetition_penalty),
            int(self.min_new_tokens),
        )

    @property
    def stream(self) -> int:
        """Where this request's random stream starts: its seed and its id, never its slot or its neighbours."""
        return zlib.crc32(self.request_id.encode("utf-8", "surrogatepass"))
