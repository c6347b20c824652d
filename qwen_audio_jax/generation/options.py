"""What to generate: job-wide options, and the per-request overrides a request line may carry.

Every value is checked once, here, with one sentence naming the value and the allowed range (the command line
and request lines both come through `GenerationOptions` / `RequestOptions.from_record`). Sampling values and
token budgets become traced per-row values on the device: changing them never recompiles.
"""

from __future__ import annotations

import dataclasses
import math
import zlib
from typing import NamedTuple

from qwen_audio_jax.choices import (
    PER_REQUEST_KEYS,
    SAMPLING_DEFAULTS,
    SAMPLING_NOTES,
    SAMPLING_RANGES,
    STOP_ID,
)
from qwen_audio_jax.errors import ConfigError, PromptError

__all__ = ["PER_REQUEST_KEYS", "GenerationOptions", "RequestOptions", "SamplingSettings", "validate_sampling"]


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


def validate_sampling(values: dict, error=ConfigError, prefix: str = "") -> None:
    """Checks each present key of PER_REQUEST_KEYS against its range (choices.SAMPLING_RANGES); `prefix` names
    where the value came from."""
    for key, value in values.items():
        r, note = SAMPLING_RANGES[key], SAMPLING_NOTES.get(key)
        _check(f"{prefix}{key}", value, r.kind, r.__contains__, f"{r.text} ({note})" if note else r.text, error)


class SamplingSettings(NamedTuple):
    """One row's sampling settings, as the engine puts them into a slot (the defaults are all off: greedy)."""

    temperature: float = SAMPLING_DEFAULTS["temperature"]
    top_k: int = SAMPLING_DEFAULTS["top_k"]
    top_p: float = SAMPLING_DEFAULTS["top_p"]
    repetition_penalty: float = SAMPLING_DEFAULTS["repetition_penalty"]
    min_new_tokens: int = SAMPLING_DEFAULTS["min_new_tokens"]


@dataclasses.dataclass(frozen=True)
class GenerationOptions:
    """Job-wide generation settings (each request may override the PER_REQUEST_KEYS)."""

    max_new_tokens: int = SAMPLING_DEFAULTS["max_new_tokens"]
    min_new_tokens: int = SAMPLING_DEFAULTS["min_new_tokens"]
    temperature: float = SAMPLING_DEFAULTS["temperature"]  # 0 = greedy (transformers' do_sample=False)
    top_k: int = SAMPLING_DEFAULTS["top_k"]  # 0 = off
    top_p: float = SAMPLING_DEFAULTS["top_p"]  # 1.0 = off
    repetition_penalty: float = SAMPLING_DEFAULTS["repetition_penalty"]  # 1.0 = off
    stop_ids: tuple[int, ...] = ()  # extra stop ids, on top of the model's (config.stop_ids)
    seed: int = SAMPLING_DEFAULTS["seed"]
    return_logprobs: bool = False  # a static switch: one compiled program per setting

    def __post_init__(self):
        validate_sampling({k: getattr(self, k) for k in PER_REQUEST_KEYS})
        for i in self.stop_ids:
            _check("stop id", i, STOP_ID.kind, STOP_ID.__contains__, STOP_ID.text)

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
    top_logprobs: int = 0  # also report this many most likely tokens per step (0-steps.TOP_LOGPROBS; the server's)

    @property
    def sampling_row(self) -> SamplingSettings:
        return SamplingSettings(
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
