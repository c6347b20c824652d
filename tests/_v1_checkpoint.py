"""Hugging-Face-style Qwen-Audio (v1) checkpoint directories from the independent oracle (`tests._v1_reference`).

Layout (docs/reference.md §3.1 / §3.6, [QA] = QwenLM/Qwen-Audio@0b0e882, [HF] = the Qwen/Qwen-Audio(-Chat) hub repos):

    config.json                      [QA] config.json's key set (`_v1_reference.config_dict`)
    model.safetensors                shards=1, or
    model-0000X-of-0000N.safetensors + model.safetensors.index.json
                                     {"metadata": {"total_size": bytes}, "weight_map": {name: file}} as on the hub
    qwen.tiktoken                    dashscope's copy, byte-identical to Qwen-Audio's (docs/reference.md §4.1)
    tokenizer_config.json            [QA] tokenizer_config.json
    generation_config.json           [QA] chat_generation_config.json (chat=True) or base_generation_config.json
    mel_filters.npz                  key mel_80, (80, 201) float32 (docs/reference.md §3.6)

Public: `real_v1_spec()`, `spec_from_config(cfg)`, `make_v1_checkpoint_dir(path, spec=, seed=, shards=, chat=,
model=, dtype=)`, `load_v1_checkpoint_dir(path, dtype=)`, `checkpoint_state_dict(path)`, and the JSON dicts below.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from tests._v1_reference import AUDIO_START_ID, V1Model, V1Spec, config_dict, init_random, mel_filters_80

# [QA] tokenizer_config.json (the hub's Qwen-Audio-Chat ships the same remote-code tokenizer).
TOKENIZER_CONFIG = {
    "model_max_length": 8192,
    "tokenizer_class": "QWenTokenizer",
    "auto_map": {"AutoTokenizer": ["tokenization_qwen.QWenTokenizer", None]},
}
# docs/reference.md §3.1; [QA] base_generation_config.json and chat_generation_config.json, verbatim.
BASE_GENERATION_CONFIG = {
    "chat_format": "raw",
    "eos_token_id": 151643,
    "pad_token_id": 151643,
    "stop_words_ids": [[151643]],
    "max_new_tokens": 512,
    "do_sample": True,
    "top_k": 0,
    "top_p": 0.8,
    "transformers_version": "4.31.0",
}
CHAT_GENERATION_CONFIG = {
    "chat_format": "chatml",
    "eos_token_id": 151643,
    "pad_token_id": 151643,
    "max_window_size": 6144,
    "max_new_tokens": 512,
    "do_sample": True,
    "top_k": 0,
    "top_p": 0.5,
    "transformers_version": "4.31.0",
}
INDEX_NAME = "model.safetensors.index.json"


def real_v1_spec() -> V1Spec:
    """Qwen-Audio(-Chat) 7B ([QA] config.json; docs/reference.md §3.1); its state dict holds 8,396,222,464
    elements (§5.3)."""
    return V1Spec(
        hidden_size=4096,
        num_hidden_layers=32,
        num_attention_heads=32,
        kv_channels=128,
        intermediate_size=22016,
        vocab_size=155947,
        seq_length=2048,
        layer_norm_epsilon=1e-5,
        rotary_emb_base=10000,
        max_position_embeddings=8192,
        use_dynamic_ntk=True,
        use_logn_attn=True,
        audio_n_state=1280,
        audio_n_head=20,
        audio_n_layer=32,
        audio_n_mels=80,
        audio_n_ctx=1500,
    )


def spec_from_config(cfg: dict) -> V1Spec:
    """Inverse of `_v1_reference.config_dict` (checks the fixed fields the oracle does not model)."""
    a = cfg["audio"]
    assert cfg["rotary_pct"] == 1.0 and cfg["no_bias"] and not cfg["tie_word_embeddings"], cfg
    assert a["avg_pool"] and a["add_audio_bos_eos_token"] and a["audio_start_id"] == AUDIO_START_ID, cfg
    assert a["output_dim"] == cfg["hidden_size"], cfg
    return V1Spec(
        hidden_size=cfg["hidden_size"],
        num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=cfg["num_attention_heads"],
        kv_channels=cfg["kv_channels"],
        intermediate_size=cfg["intermediate_size"],
        vocab_size=cfg["vocab_size"],
        seq_length=cfg["seq_length"],
        layer_norm_epsilon=cfg["layer_norm_epsilon"],
        rotary_emb_base=cfg["rotary_emb_base"],
        max_position_embeddings=cfg["max_position_embeddings"],
        use_dynamic_ntk=cfg["use_dynamic_ntk"],
        use_logn_attn=cfg["use_logn_attn"],
        audio_n_state=a["n_state"],
        audio_n_head=a["n_head"],
        audio_n_layer=a["n_layer"],
        audio_n_mels=a["n_mels"],
        audio_n_ctx=a["n_ctx"],
    )


def _shard_names(names: list[str], sizes: dict[str, int], shards: int) -> list[list[str]]:
    """Split the state-dict order into `shards` contiguous, non-empty groups of about equal bytes (as the hub's)."""
    assert 1 <= shards <= len(names), (shards, len(names))
    groups: list[list[str]] = [[]]
    acc, target = 0, sum(sizes.values()) / shards
    for i, name in enumerate(names):
        must_open = shards - len(groups) >= len(names) - i  # every shard still to open needs a name
        if groups[-1] and len(groups) < shards and (acc >= target * len(groups) or must_open):
            groups.append([])
        groups[-1].append(name)
        acc += sizes[name]
    assert len(groups) == shards and all(groups), [len(g) for g in groups]
    return groups


def make_v1_checkpoint_dir(
    path: str | Path,
    spec: V1Spec | None = None,
    seed: int = 0,
    shards: int = 1,
    chat: bool = True,
    model: V1Model | None = None,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a Qwen-Audio checkpoint dir for `model` (default: `init_random(spec or V1Spec(), seed)`), cast to `dtype`
    (the hub files are bf16; fp32 keeps parity tests exact). Returns `path`."""
    from safetensors.torch import save_file

    from tests._tokenizer_dirs import qwen_tiktoken_file  # skips the calling test when dashscope is missing

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model = init_random(spec, seed) if model is None else model
    spec = model.spec
    state = {k: v.detach().to(dtype).contiguous().clone() for k, v in model.state_dict().items()}
    names = list(state)
    sizes = {k: v.numel() * v.element_size() for k, v in state.items()}
    if shards == 1:
        save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for i, group in enumerate(_shard_names(names, sizes, shards), start=1):
            fname = f"model-{i:05d}-of-{shards:05d}.safetensors"
            save_file({k: state[k] for k in group}, str(path / fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in group})
        index = {"metadata": {"total_size": sum(sizes.values())}, "weight_map": dict(sorted(weight_map.items()))}
        (path / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    (path / "config.json").write_text(json.dumps(config_dict(spec), indent=2) + "\n")
    (path / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2) + "\n")
    gen = CHAT_GENERATION_CONFIG if chat else BASE_GENERATION_CONFIG
    (path / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    shutil.copyfile(qwen_tiktoken_file(), path / "qwen.tiktoken")
    np.savez_compressed(path / "mel_filters.npz", mel_80=mel_filters_80().numpy())
    return path


def checkpoint_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a dir written as above (single file, or via the index's weight_map)."""
    from safetensors.torch import load_file

    path = Path(path)
    if (path / INDEX_NAME).is_file():
        weight_map = json.loads((path / INDEX_NAME).read_text())["weight_map"]
        out: dict[str, torch.Tensor] = {}
        for fname in sorted(set(weight_map.values())):
            part = load_file(str(path / fname))
            assert all(weight_map[k] == fname for k in part), fname  # each tensor where the index says
            out.update(part)
        assert set(out) == set(weight_map), set(out) ^ set(weight_map)
        return out
    return load_file(str(path / "model.safetensors"))


def load_v1_checkpoint_dir(path: str | Path, dtype: torch.dtype = torch.float32) -> V1Model:
    """Rebuild the oracle model from config.json + safetensors (strict: names and shapes must match)."""
    path = Path(path)
    spec = spec_from_config(json.loads((path / "config.json").read_text()))
    model = V1Model(spec)
    model.load_state_dict(checkpoint_state_dict(path), strict=True)
    return model.to(dtype).eval()
