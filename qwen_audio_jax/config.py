"""Model configuration: frozen dataclasses, presets, and our own `config.json` serialisation.

One model code serves both generations of the family; a config says which one it is (`model_type`) and
carries the switches where they differ (docs/reference.md §3):

| | Qwen2-Audio | Qwen-Audio v1 |
|---|---|---|
| mel bins, clip length rule | 128, ceil(samples / 160) | 80, floor(samples / 160) |
| audio encoder | masked keys only (a fixed 30 s input) | each clip over its own length (later frames zeroed) |
| audio delimiters | `<|audio_bos|>` / `<|audio_eos|>` embedding rows | learned `audio_bos_eos_token` vectors |
| RoPE | plain | dynamic NTK + logn attention past `ntk_context` tokens |

The Hugging Face `config.json` forms of both are read and written in `conversion/hf_config.py`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from qwen_audio_jax.choices import QWEN2_AUDIO, QWEN_AUDIO_V1, VARIANTS
from qwen_audio_jax.errors import ConfigError

MODEL_TYPES = VARIANTS


@dataclasses.dataclass(frozen=True)
class AudioEncoderConfig:
    """Whisper-style audio encoder (conv stem + pre-LN transformer + avg-pool + LayerNorm)."""

    num_mel_bins: int = 128
    d_model: int = 1280
    num_layers: int = 32
    num_heads: int = 20
    ffn_dim: int = 5120
    max_source_positions: int = 1500  # positions after conv2; mel frames = 2x this
    layer_norm_eps: float = 1e-5
    # Qwen-Audio v1 encodes each clip over its own length: mel frames past 2 x its conv2 length are zeroed
    # (what the conv stem's zero padding gives a clip encoded alone) and so are the padded positions after it.
    per_clip_length: bool = False

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def max_mel_frames(self) -> int:
        return 2 * self.max_source_positions


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Decoder-only language model (Qwen2, and Qwen-7B mapped onto the same layout)."""

    vocab_size: int = 156032
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int = 128
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 8192
    # Qwen-Audio v1 (Qwen-7B) inference: dynamic NTK RoPE scaling and logn attention scaling, both inert up to
    # `ntk_context` tokens (Qwen-7B's `seq_length`, 2048).
    dynamic_ntk: bool = False
    logn_attention: bool = False
    ntk_context: int = 2048

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_attention_heads ({self.num_heads}) must be a multiple of num_key_value_heads "
                f"({self.num_kv_heads}); fix the text config."
            )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The whole audio-language model: encoder -> projector -> decoder, plus the ids the model code needs."""

    audio: AudioEncoderConfig = AudioEncoderConfig()
    decoder: DecoderConfig = DecoderConfig()
    model_type: str = QWEN2_AUDIO
    audio_token_id: int = 151646  # <|AUDIO|> (v1: [[[AUDIO:modality]]] 151851): one slot per audio frame
    bos_token_id: int = 151643
    eos_token_id: int = 151645  # <|im_end|>
    pad_token_id: int = 151643  # <|endoftext|>, what the reference eval code pads with
    # v1 only: the ids whose positions take the learned audio_bos_eos_token vectors (<audio>, </audio>).
    audio_start_id: int | None = None
    audio_end_id: int | None = None
    # Ids that end generation by default (an empty tuple means (eos, pad)); `--stop-id` adds to them.
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ConfigError(f"model_type {self.model_type!r} is not one of {', '.join(MODEL_TYPES)}.")
        if self.is_v1 and (self.audio_start_id is None or self.audio_end_id is None):
            raise ConfigError("a Qwen-Audio v1 config needs audio_start_id and audio_end_id (<audio>, </audio>).")

    @property
    def is_v1(self) -> bool:
        return self.model_type == QWEN_AUDIO_V1

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """The ids that end generation: the one place they are derived (CLI flags only add to them)."""
        return tuple(dict.fromkeys(self.stop_token_ids or (self.eos_token_id, self.pad_token_id)))

    # ---- serialisation of our own config.json -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        d = dict(d)
        try:
            audio = AudioEncoderConfig(**d.pop("audio"))
            decoder = DecoderConfig(**d.pop("decoder"))
            if "stop_token_ids" in d:
                d["stop_token_ids"] = tuple(d["stop_token_ids"])
            return cls(audio=audio, decoder=decoder, **d)
        except (KeyError, TypeError) as e:
            raise ConfigError(f"not a qwen-audio-jax model config ({e}); re-run `qwen-audio-jax convert`.") from e

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read model config {path}: {e}") from e


def qwen2_audio_7b() -> ModelConfig:
    """Qwen2-Audio-7B and -7B-Instruct: 8,397,094,912 parameters (docs/reference.md §5.3)."""
    return ModelConfig()


def qwen_audio_7b() -> ModelConfig:
    """Qwen-Audio and Qwen-Audio-Chat (v1): Qwen-7B + a Whisper-large-v2 style 80-mel encoder, 8,396,222,464
    parameters."""
    return ModelConfig(
        audio=AudioEncoderConfig(num_mel_bins=80, per_clip_length=True),
        decoder=DecoderConfig(
            vocab_size=155947,
            intermediate_size=11008,
            rms_norm_eps=1e-5,
            dynamic_ntk=True,
            logn_attention=True,
        ),
        model_type=QWEN_AUDIO_V1,
        audio_token_id=151851,
        bos_token_id=151643,
        eos_token_id=151643,
        pad_token_id=151643,
        audio_start_id=155163,
        audio_end_id=155164,
        stop_token_ids=(151643, 151645, 151644),  # <|endoftext|>, and the Chat stop words <|im_end|>, <|im_start|>
    )


def tiny(vocab_size: int = 151936 + 160, num_kv_heads: int = 2) -> ModelConfig:
    """A tiny random-weight config for tests: real ids, small widths, GQA by default."""
    return ModelConfig(
        audio=AudioEncoderConfig(
            num_mel_bins=128, d_model=64, num_layers=2, num_heads=4, ffn_dim=128, max_source_positions=1500
        ),
        decoder=DecoderConfig(
            vocab_size=vocab_size,
            hidden_size=64,
            intermediate_size=128,
            num_layers=2,
            num_heads=4,
            num_kv_heads=num_kv_heads,
            head_dim=16,
            rms_norm_eps=1e-5,
            rope_theta=10000.0,
            max_position_embeddings=8192,
        ),
    )


PRESETS = {"qwen2_audio_7b": qwen2_audio_7b, "qwen_audio_7b": qwen_audio_7b, "tiny": tiny}


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}.")
    return PRESETS[name]()
