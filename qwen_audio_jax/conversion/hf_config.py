"""Hugging Face `config.json` <-> ModelConfig, for both model generations.

* Qwen2-Audio (`model_type: qwen2_audio`, transformers' `Qwen2AudioConfig`). The hub file is sparse: missing
  text fields fall back to `Qwen2Config` defaults, and one of those (rms_norm_eps 1e-6) is overridden by the
  checkpoint (1e-5), so the defaults are spelled out here.
* Qwen-Audio v1 (`model_type: qwen`, the remote-code `QWenConfig` with an `audio` sub-dict).

Any attribute whose value changes the computation in a way this port does not implement (rope scaling, sliding
windows, tied embeddings, partial rotary...) is refused with one sentence naming it, never silently mis-run.
"""

from __future__ import annotations

from typing import Any

from qwen_audio_jax.config import (
    QWEN2_AUDIO,
    QWEN_AUDIO_V1,
    AudioEncoderConfig,
    DecoderConfig,
    ModelConfig,
)
from qwen_audio_jax.errors import ConfigError

# Qwen2Config defaults (transformers configuration_qwen2.py); used where the hub config.json is silent.
QWEN2_TEXT_DEFAULTS = dict(
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
QWEN2_AUDIO_DEFAULTS = dict(
    num_mel_bins=128,
    encoder_layers=32,
    encoder_attention_heads=20,
    encoder_ffn_dim=5120,
    d_model=1280,
    activation_function="gelu",
    scale_embedding=False,
    max_source_positions=1500,
)

# QWenConfig defaults (Qwen-Audio configuration_qwen.py) and its audio sub-config (config.json "audio").
V1_DEFAULTS = dict(
    vocab_size=151936,
    hidden_size=4096,
    num_hidden_layers=32,
    num_attention_heads=32,
    kv_channels=128,
    intermediate_size=22016,  # the MLP is intermediate_size // 2 wide (w1, w2: 4096 -> 11008)
    layer_norm_epsilon=1e-6,
    max_position_embeddings=8192,
    seq_length=2048,
    rotary_emb_base=10000,
    rotary_pct=1.0,
    use_dynamic_ntk=True,
    use_logn_attn=True,
    no_bias=True,
    tie_word_embeddings=False,
    scale_attn_weights=True,
)
V1_AUDIO_DEFAULTS = dict(
    n_mels=80,
    n_ctx=1500,
    n_state=1280,
    n_head=20,
    n_layer=32,
    output_dim=4096,
    avg_pool=True,
    add_audio_bos_eos_token=True,
    audio_start_id=155163,
)
# Fixed ids of v1's special-token table (tokenization_qwen.py; docs/reference.md §3.5).
V1_ENDOFTEXT, V1_IM_START, V1_IM_END, V1_AUDIO_PAD = 151643, 151644, 151645, 151851


def is_v1_hf_config(hf: dict[str, Any]) -> bool:
    return hf.get("model_type") == "qwen" and isinstance(hf.get("audio"), dict)


def from_hf_config(hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Parses either generation's `config.json` dict; refuses what this port would compute differently."""
    if not isinstance(hf, dict):
        raise ConfigError(f"{source}: not a JSON object.")
    if is_v1_hf_config(hf):
        return _from_v1(hf, source)
    model_type = hf.get("model_type")
    if model_type == "qwen":
        raise ConfigError(f"{source}: a Qwen (text-only) config without an `audio` section is not Qwen-Audio.")
    if model_type != QWEN2_AUDIO:
        raise ConfigError(
            f"{source}: model_type is {model_type!r}, expected 'qwen2_audio' (Qwen2-Audio) or 'qwen' with an "
            "'audio' section (Qwen-Audio)."
        )
    return _from_qwen2_audio(hf, source)


def to_hf_config(config: ModelConfig) -> dict[str, Any]:
    """The `config.json` dict the reference loads into an identical model (Qwen2-Audio or Qwen-Audio v1)."""
    return _to_v1(config) if config.is_v1 else _to_qwen2_audio(config)


# ---- Qwen2-Audio -----------------------------------------------------------------------------------------
def _from_qwen2_audio(hf: dict[str, Any], source: str) -> ModelConfig:
    text = {**QWEN2_TEXT_DEFAULTS, **hf.get("text_config", {})}
    audio = {**QWEN2_AUDIO_DEFAULTS, **hf.get("audio_config", {})}
    _refuse_qwen2(text, audio, source)
    heads = text["num_attention_heads"]
    decoder = DecoderConfig(
        vocab_size=text["vocab_size"],
        hidden_size=text["hidden_size"],
        intermediate_size=text["intermediate_size"],
        num_layers=text["num_hidden_layers"],
        num_heads=heads,
        num_kv_heads=text["num_key_value_heads"] or heads,
        head_dim=text.get("head_dim") or text["hidden_size"] // heads,
        rms_norm_eps=float(text["rms_norm_eps"]),
        rope_theta=float(text["rope_theta"]),
        max_position_embeddings=text["max_position_embeddings"],
    )
    encoder = AudioEncoderConfig(
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
    return ModelConfig(
        audio=encoder,
        decoder=decoder,
        audio_token_id=hf.get("audio_token_index", hf.get("audio_token_id", 151646)),
        bos_token_id=151643 if bos is None else bos,
        eos_token_id=151645 if eos is None else eos,
        pad_token_id=text["pad_token_id"] if text["pad_token_id"] is not None else 151643,
    )


def _refuse_qwen2(text: dict, audio: dict, source: str) -> None:
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
    _raise(problems, source)


def _to_qwen2_audio(config: ModelConfig) -> dict[str, Any]:
    a, t = config.audio, config.decoder
    return {
        "architectures": ["Qwen2AudioForConditionalGeneration"],
        "model_type": QWEN2_AUDIO,
        "audio_token_index": config.audio_token_id,
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
            "bos_token_id": config.bos_token_id,
            "eos_token_id": config.eos_token_id,
            # pad_token_id is deliberately absent (as in the hub config): Qwen2Model would turn it into the
            # embedding's padding_idx, which freezes that row's gradient in PyTorch fine-tuning.
            "torch_dtype": "bfloat16",
        },
        "tie_word_embeddings": False,
        "vocab_size": t.vocab_size,
    }


# ---- Qwen-Audio v1 ---------------------------------------------------------------------------------------
def _from_v1(hf: dict[str, Any], source: str) -> ModelConfig:
    text = {**V1_DEFAULTS, **{k: v for k, v in hf.items() if k != "audio"}}
    audio = {**V1_AUDIO_DEFAULTS, **hf["audio"]}
    problems = []
    if float(text["rotary_pct"]) != 1.0:
        problems.append(f"rotary_pct={text['rotary_pct']} (only full rotary embeddings are implemented)")
    if not text["no_bias"]:
        problems.append("no_bias=false (Qwen-7B's projections other than c_attn have no bias)")
    if text["tie_word_embeddings"]:
        problems.append("tie_word_embeddings=true (this port keeps an untied lm_head)")
    if not text["scale_attn_weights"]:
        problems.append("scale_attn_weights=false (attention is always scaled by 1/sqrt(head_dim))")
    if not audio["avg_pool"]:
        problems.append("audio.avg_pool=false (the encoder always pools by 2)")
    if not audio["add_audio_bos_eos_token"]:
        problems.append("audio.add_audio_bos_eos_token=false (the learned audio bos/eos vectors are required)")
    if audio["output_dim"] != text["hidden_size"]:
        problems.append(f"audio.output_dim={audio['output_dim']} differs from hidden_size={text['hidden_size']}")
    if text["intermediate_size"] % 2:
        problems.append(f"intermediate_size={text['intermediate_size']} is odd (the MLP is half of it)")
    if audio["n_state"] % audio["n_head"]:
        problems.append("audio.n_state is not a multiple of audio.n_head")
    _raise(problems, source)
    start = int(audio["audio_start_id"])
    decoder = DecoderConfig(
        vocab_size=text["vocab_size"],
        hidden_size=text["hidden_size"],
        intermediate_size=text["intermediate_size"] // 2,
        num_layers=text["num_hidden_layers"],
        num_heads=text["num_attention_heads"],
        num_kv_heads=text["num_attention_heads"],
        head_dim=text["kv_channels"],
        rms_norm_eps=float(text["layer_norm_epsilon"]),
        rope_theta=float(text["rotary_emb_base"]),
        max_position_embeddings=text["max_position_embeddings"],
        dynamic_ntk=bool(text["use_dynamic_ntk"]),
        logn_attention=bool(text["use_logn_attn"]),
        ntk_context=int(text["seq_length"]),
    )
    encoder = AudioEncoderConfig(
        num_mel_bins=audio["n_mels"],
        d_model=audio["n_state"],
        num_layers=audio["n_layer"],
        num_heads=audio["n_head"],
        ffn_dim=4 * audio["n_state"],
        max_source_positions=audio["n_ctx"],
        per_clip_length=True,
    )
    return ModelConfig(
        audio=encoder,
        decoder=decoder,
        model_type=QWEN_AUDIO_V1,
        audio_token_id=V1_AUDIO_PAD,
        bos_token_id=V1_ENDOFTEXT,
        eos_token_id=V1_ENDOFTEXT,
        pad_token_id=V1_ENDOFTEXT,
        audio_start_id=start,
        audio_end_id=start + 1,
        stop_token_ids=(V1_ENDOFTEXT, V1_IM_END, V1_IM_START),
    )


def _to_v1(config: ModelConfig) -> dict[str, Any]:
    a, t = config.audio, config.decoder
    return {
        "architectures": ["QWenLMHeadModel"],
        "auto_map": {
            "AutoConfig": "configuration_qwen.QWenConfig",
            "AutoModelForCausalLM": "modeling_qwen.QWenLMHeadModel",
        },
        "model_type": "qwen",
        "attn_dropout_prob": 0.0,
        "emb_dropout_prob": 0.0,
        "bf16": False,
        "fp16": False,
        "fp32": False,
        "hidden_size": t.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": 2 * t.intermediate_size,
        "kv_channels": t.head_dim,
        "layer_norm_epsilon": t.rms_norm_eps,
        "max_position_embeddings": t.max_position_embeddings,
        "no_bias": True,
        "num_attention_heads": t.num_heads,
        "num_hidden_layers": t.num_layers,
        "onnx_safe": None,
        "rotary_emb_base": t.rope_theta,
        "rotary_pct": 1.0,
        "scale_attn_weights": True,
        "seq_length": t.ntk_context,
        "tie_word_embeddings": False,
        "tokenizer_type": "QWenTokenizer",
        "use_cache": True,
        "use_dynamic_ntk": t.dynamic_ntk,
        "use_flash_attn": "auto",
        "use_logn_attn": t.logn_attention,
        "vocab_size": t.vocab_size,
        "audio": {
            "n_mels": a.num_mel_bins,
            "n_ctx": a.max_source_positions,
            "n_state": a.d_model,
            "n_head": a.num_heads,
            "n_layer": a.num_layers,
            "output_dim": t.hidden_size,
            "avg_pool": True,
            "add_audio_bos_eos_token": True,
            "audio_start_id": config.audio_start_id,
        },
    }


def _raise(problems: list[str], source: str) -> None:
    if problems:
        raise ConfigError(f"{source}: unsupported setting(s): " + "; ".join(problems) + ".")
