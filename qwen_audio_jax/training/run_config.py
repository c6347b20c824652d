"""Run configuration for `dpo` (and SFT): a small YAML file plus dotted command-line overrides.

    qwen-audio-jax dpo --config configs/dpo_qwen2_audio_7b.yaml train.steps=500 loss.beta=0.2 mesh=fsdp=8

Every key is a field below; an unknown key, a value of the wrong type or out of range is a one-line error.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from pathlib import Path
from typing import Any

import yaml

from qwen_audio_jax.choices import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_LORA_BASE_DTYPE,
    DEFAULT_REFERENCE_MODE,
    DEFAULT_REMAT,
    DEFAULT_TRAIN_COMPUTE_DTYPE,
    DTYPES,
    LORA_BASE_DTYPES,
    REFERENCE_MODES,
)
from qwen_audio_jax.errors import ConfigError
from qwen_audio_jax.model.remat import check_policy
from qwen_audio_jax.training.loss import LossConfig
from qwen_audio_jax.training.optimizer import OptimConfig
from qwen_audio_jax.training.specaugment import AugmentConfig


def _at_least(section: str, obj, minimum: int, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if value < minimum:
            raise ConfigError(f"{section}.{name}={value} is out of range: it must be >= {minimum}.")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    train: str = ""  # preference JSONL (DPO) or SFT JSONL
    max_length: int = 2048  # longer examples are dropped (counted in the report), never truncated

    def __post_init__(self):
        _at_least("data", self, 1, "max_length")


@dataclasses.dataclass(frozen=True)
class TrainLoopConfig:
    steps: int = 1000  # optimizer steps
    batch_size: int = DEFAULT_BATCH_SIZE  # examples (pairs for DPO) per micro-batch, over all processes
    grad_accum: int = 1  # micro-batches per optimizer step
    seed: int = 0
    compute_dtype: str = DEFAULT_TRAIN_COMPUTE_DTYPE  # "bfloat16": bf16 compute over fp32 master weights
    remat: str = DEFAULT_REMAT  # choices.REMAT_POLICIES
    log_every: int = 1
    num_threads: int = 2  # data preparation threads

    def __post_init__(self):
        _at_least("train", self, 1, "steps", "batch_size", "grad_accum", "log_every", "num_threads")
        _at_least("train", self, 0, "seed")
        if self.compute_dtype not in DTYPES:
            raise ConfigError(f"train.compute_dtype={self.compute_dtype!r} must be {' or '.join(DTYPES)}.")
        check_policy(self.remat)


@dataclasses.dataclass(frozen=True)
class ReferenceConfig:
    mode: str = DEFAULT_REFERENCE_MODE  # "model": frozen copy of the initial policy; "precomputed": cached log-probs
    model: str | None = None  # another model dir as the reference (default: the policy's starting point)

    def __post_init__(self):
        if self.mode not in REFERENCE_MODES:
            raise ConfigError(f"reference.mode={self.mode!r} must be {' or '.join(repr(m) for m in REFERENCE_MODES)}.")


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """LoRA / QLoRA (model/lora.py): rank > 0 trains adapters only, over a frozen base held once."""

    rank: int = 0  # 0: no LoRA, every weight trains
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ()  # HF module names; empty: every linear layer of the language model
    audio_encoder: bool = False  # also adapt the audio tower's linear layers
    base_dtype: str = DEFAULT_LORA_BASE_DTYPE  # the frozen base: float32 | bfloat16 | int8 (QLoRA)
    rslora: bool = False  # scale alpha / sqrt(rank) instead of alpha / rank (PEFT's use_rslora)

    def __post_init__(self):
        _at_least("lora", self, 0, "rank")
        if self.alpha <= 0:
            raise ConfigError(f"lora.alpha={self.alpha:g} must be > 0.")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout={self.dropout:g} must be in [0, 1).")
        if self.base_dtype not in LORA_BASE_DTYPES:
            raise ConfigError(f"lora.base_dtype={self.base_dtype!r} must be one of {', '.join(LORA_BASE_DTYPES)}.")

    @property
    def enabled(self) -> bool:
        return self.rank > 0

    def spec(self, is_v1: bool):
        """The model's LoraSpec (model/lora.py); default targets: each generation's every decoder linear layer."""
        from qwen_audio_jax.model.lora import DECODER_TARGETS, spec_from_targets

        targets = self.targets or tuple(DECODER_TARGETS[bool(is_v1)])
        try:
            return spec_from_targets(
                targets,
                is_v1=is_v1,
                rank=self.rank,
                alpha=self.alpha,
                dropout=self.dropout,
                audio=self.audio_encoder,
                rslora=self.rslora,
            )
        except ValueError as e:
            raise ConfigError(str(e)) from e


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = 100
    keep: int = 3
    async_save: bool = True

    def __post_init__(self):
        _at_least("checkpoint", self, 1, "every", "keep")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    model: str = ""  # model dir (from `convert`)
    output_dir: str = "runs/dpo"
    mesh: str | None = None  # e.g. "fsdp=8" or "data=2,fsdp=2,tensor=2"
    data: DataConfig = DataConfig()
    loss: LossConfig = LossConfig()
    reference: ReferenceConfig = ReferenceConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainLoopConfig = TrainLoopConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    augment: AugmentConfig = AugmentConfig()
    lora: LoraConfig = LoraConfig()

    def __post_init__(self):
        if self.augment.spec_augment and self.loss.is_preference and self.reference.mode == "precomputed":
            raise ConfigError(
                "augment.spec_augment with reference.mode: precomputed would compare the policy on "
                "masked audio with a reference on clean audio; use reference.mode: model."
            )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _build(cls, values: dict, where: str):
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {values!r}.")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}.")
    kwargs = {}
    for name, value in values.items():
        hint = hints[name]
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, key)
        else:
            kwargs[name] = _coerce(value, hint, key)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where or 'config'}: {e}") from e


def _coerce(value: Any, hint, key: str):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if value is None and type(None) in args:
        return None
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_coerce(v, args[0], key) for v in items)
    if origin is typing.Union or (origin is not None and type(None) in args):
        hint = next(a for a in args if a is not type(None))
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if isinstance(value, bool):
            return value
    elif hint in (int, float, str):
        try:
            if hint is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            if hint is not str and isinstance(value, bool):
                raise ValueError
            out = hint(value)
        except (TypeError, ValueError, OverflowError):
            pass
        else:
            _check_number(out, key)
            return out
    raise ConfigError(f"{key}: {value!r} is not a valid {getattr(hint, '__name__', hint)}.")


# Every number of a run ends up in a 32-bit device value or an optax hyper-parameter: a NaN or an infinity
# (YAML's .nan / .inf) would pass every range check (comparisons with NaN are false) and corrupt training from
# its first step, and an integer past int32 would overflow, so both are refused when the config is read. So is
# a float past float32's range (1e39 is finite here and infinite on the device).
_INT32 = (-(2**31), 2**31 - 1)
_FLOAT32_MAX = 3.4028234663852886e38


def _check_number(value, key: str) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: {value!r} is not a finite number; pass a finite value.")
    if isinstance(value, float) and abs(value) > _FLOAT32_MAX:
        raise ConfigError(f"{key}={value:g} is out of range: it is not finite in float32 (|x| <= 3.4e+38).")
    if isinstance(value, int) and not _INT32[0] <= value <= _INT32[1]:
        raise ConfigError(f"{key}={value} is out of range: it must be in [{_INT32[0]}, {_INT32[1]}].")


def _set_dotted(doc: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        doc = doc.setdefault(k, {})
        if not isinstance(doc, dict):
            raise ConfigError(f"override {dotted!r}: {k} is not a section.")
    doc[keys[-1]] = value


def load_run_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """YAML file (optional) + `a.b=value` overrides (values parsed as YAML scalars/lists)."""
    doc: dict = {}
    if path is not None:
        try:
            doc = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as e:
            raise ConfigError(f"cannot read {path}: {e.strerror}.") from e
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            raise ConfigError(f"{path}: not valid YAML ({getattr(e, 'problem', None) or 'parse error'}{where}).") from e
    for item in overrides:
        key, eq, raw = item.partition("=")
        if not eq or not key:
            raise ConfigError(f"override {item!r} must look like key.sub=value.")
        _set_dotted(doc, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return _build(RunConfig, doc, "")
