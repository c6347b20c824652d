"""Model configuration: frozen dataclasses, presets, and the mapping to and from Hugging Face `config.json`.

The Qwen2-Audio `config.json` on the hub is sparse (REFERENCE 1.2): missing text fields fall back to
`Qwen2Config` defaults, and one of those defaults (rms_norm_eps 1e-6) is overridden by the checkpoint. We
therefore parse with the defaults spelled out here and refuse any attribute whose value changes the
computation in a way this port does not implement (rope scaling, sliding windows, tied embeddings...), rather
than silently computing something else.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from qwen_audio_jax.errors import ConfigError

QWEN2_AUDIO = "qwen2_audio"

# Qwen2Config defaults (transformers configuration_qwen2.py); used where the hub config.json is silent.
_QWEN2_TEXT_DEFAULTS = dict(
    vocab_size=151936,
    hidden_size=4096,
    intermediate_size=22016,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=None,  # None means "= num_attention_heads"
    hidden_act="silu",
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    rope_scaling=None,
    tie_word_embeddings=False,
    use_sliding_window=False,
    attention_dropout=0.0,
    bos_token_id=None,
    eos_token_id=None,
    pad_token_id=None,
)

# Qwen2AudioEncoderConfig defaults (transformers configuration_qwen2_audio.py).
_AUDIO_DEFAULTS = dict(
    num_mel_bins=128,
    encoder_layers=32,
    encoder_attention_heads=20,
    encoder_ffn_dim=5120,
    d_model=1280,
    activation_function="gelu",
    scale_embedding=False,
    max_source_positions=1500,
    dropout=0.0,
    attention_dropout=0.0,
    activation_dropout=0.0,
)


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

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def max_mel_frames(self) -> int:
        return 2 * self.max_source_positions


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Qwen2 decoder-only language model."""

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
    audio_token_id: int = 151646  # <|AUDIO|>: one slot per projected audio frame
    bos_token_id: int = 151643
    eos_token_id: int = 151645  # <|im_end|>
    pad_token_id: int = 151643  # <|endoftext|>, what the reference eval code pads with

    # ---- serialisation of our own config.json -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        d = dict(d)
        try:
            audio = AudioEncoderConfig(**d.pop("audio"))
            decoder = DecoderConfig(**d.pop("decoder"))
            return cls(audio=audio, decoder=decoder, **d)
        except (KeyError, TypeError) as e:
            raise ConfigError(f"not a qwen-audio-jax model config ({e}); re-run `qwen-audio-jax convert`.") from e

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "ModelConfig":
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read model config {path}: {e}") from e

    # ---- Hugging Face config.json --------------------------------------------------------------------------
    @classmethod
    def from_hf_config(cls, hf: dict[str, Any], source: str = "config.json") -> "ModelConfig":
        """Parses a Qwen2-Audio `config.json` dict; refuses what this port would compute differently."""
        model_type = hf.get("model_type")
        if model_type == "qwen" or "audio" in hf and "n_mels" in hf.get("audio", {}):
            raise ConfigError(
                f"{source}: Qwen-Audio v1 (model_type 'qwen') checkpoints are not supported by the converter yet; "
                "use a Qwen2-Audio checkpoint."
            )
        if model_type != QWEN2_AUDIO:
            raise ConfigError(
                f"{source}: model_type is {model_type!r}, expected 'qwen2_audio' (a Qwen2-Audio checkpoint)."
            )
        text = {**_QWEN2_TEXT_DEFAULTS, **hf.get("text_config", {})}
        audio = {**_AUDIO_DEFAULTS, **hf.get("audio_config", {})}
        _refuse_unsupported(text, audio, source)
        heads = text["num_attention_heads"]
        kv_heads = text["num_key_value_heads"] or heads
        head_dim = text.get("head_dim") or text["hidden_size"] // heads
        decoder = DecoderConfig(
            vocab_size=text["vocab_size"],
            hidden_size=text["hidden_size"],
            intermediate_size=text["intermediate_size"],
            num_layers=text["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=float(text["rms_norm_eps"]),
            rope_theta=float(text["rope_theta"]),
            max_position_embeddings=text["max_position_embeddings"],
        )
        enc = AudioEncoderConfig(
            num_mel_bins=audio["num_mel_bins"],
            d_model=audio["d_model"],
            num_layers=audio["encoder_layers"],
            num_heads=audio["encoder_attention_heads"],
            ffn_dim=audio["encoder_ffn_dim"],
            max_source_positions=audio["max_source_positions"],
        )
        eos = text["eos_token_id"]
        if isinstance(eos, list):
            eos = eos[0]
        bos = text["bos_token_id"]
        return cls(
            audio=enc,
            decoder=decoder,
            audio_token_id=hf.get("audio_token_index", hf.get("audio_token_id", 151646)),
            bos_token_id=151643 if bos is None else bos,
            eos_token_id=151645 if eos is None else eos,
            pad_token_id=text["pad_token_id"] if text["pad_token_id"] is not None else 151643,
        )

    def to_hf_config(self) -> dict[str, Any]:
        """The Qwen2-Audio `config.json` dict that transformers loads into an identical model."""
        a, t = self.audio, self.decoder
        return {
            "architectures": ["Qwen2AudioForConditionalGeneration"],
            "model_type": QWEN2_AUDIO,
            "audio_token_index": self.audio_token_id,
            "ignore_index": -100,
            "audio_config": {
                "model_type": "qwen2_audio_encoder",
                "num_mel_bins": a.num_mel_bins,
                "encoder_layers": a.num_layers,
                "encoder_attention_heads": a.num_heads,
                "encoder_ffn_dim": a.ffn_dim,
                "d_model": a.d_model,
                "activation_function": "gelu",
                "scale_embedding": False,
                "max_source_positions": a.max_source_positions,
            },
            "text_config": {
                "model_type": "qwen2",
                "vocab_size": t.vocab_size,
                "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size,
                "num_hidden_layers": t.num_layers,
                "num_attention_heads": t.num_heads,
                "num_key_value_heads": t.num_kv_heads,
                "head_dim": t.head_dim,
                "hidden_act": "silu",
                "max_position_embeddings": t.max_position_embeddings,
                "rms_norm_eps": t.rms_norm_eps,
                "rope_theta": t.rope_theta,
                "rope_scaling": None,
                "tie_word_embeddings": False,
                "use_sliding_window": False,
                "use_mrope": False,
                "bos_token_id": self.bos_token_id,
                "eos_token_id": self.eos_token_id,
                # pad_token_id is deliberately absent (as in the hub config): Qwen2Model would turn it into the
                # embedding's padding_idx, which freezes that row's gradient in PyTorch fine-tuning.
                "torch_dtype": "bfloat16",
            },
            "tie_word_embeddings": False,
            "vocab_size": t.vocab_size,
        }


def _refuse_unsupported(text: dict, audio: dict, source: str) -> None:
    """Raises ConfigError for any attribute that would make the reference compute something we do not."""
    problems = []
    if text.get("rope_scaling"):
        problems.append(f"text_config.rope_scaling={text['rope_scaling']!r} (only plain RoPE is implemented)")
    if text.get("use_sliding_window"):
        problems.append("text_config.use_sliding_window=true (sliding-window attention is not implemented)")
    if text.get("tie_word_embeddings"):
        problems.append("text_config.tie_word_embeddings=true (this port keeps an untied lm_head)")
    if text.get("use_mrope"):
        problems.append("text_config.use_mrope=true (only 1-D RoPE positions are implemented)")
    if text.get("hidden_act", "silu") != "silu":
        problems.append(f"text_config.hidden_act={text['hidden_act']!r} (only silu)")
    layer_types = text.get("layer_types")
    if layer_types and any(t != "full_attention" for t in layer_types):
        problems.append("text_config.layer_types contains non-full attention layers")
    if audio.get("activation_function", "gelu") != "gelu":
        problems.append(f"audio_config.activation_function={audio['activation_function']!r} (only exact gelu)")
    if audio.get("scale_embedding"):
        problems.append("audio_config.scale_embedding=true (not implemented)")
    if audio["d_model"] % audio["encoder_attention_heads"]:
        problems.append("audio_config.d_model is not a multiple of encoder_attention_heads")
    if problems:
        raise ConfigError(f"{source}: unsupported setting(s): " + "; ".join(problems) + ".")


def qwen2_audio_7b() -> ModelConfig:
    """Qwen2-Audio-7B and -7B-Instruct (REFERENCE 1.2): 8,397,094,912 parameters."""
    return ModelConfig()


def tiny(vocab_size: int = 151936 + 160, num_kv_heads: int = 2) -> ModelConfig:
    """A tiny random-weight config for tests and the demo: real ids, small widths, GQA by default."""
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


PRESETS = {"qwen2_audio_7b": qwen2_audio_7b, "tiny": tiny}


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}.")
    return PRESETS[name]()
