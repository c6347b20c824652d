"""Files this package ships so that the demo and the docs' examples need no download.

`assets/qwen2_tokenizer/` holds the Qwen2 byte-level BPE (`vocab.json` + `merges.txt`, gzipped; the same
151,643 ranks as Qwen2-Audio's tokenizer, Apache-2.0, see assets/qwen2_tokenizer/NOTICE). With Qwen2-Audio's
six added tokens (docs/reference.md §4.2) they make a complete Qwen2-Audio tokenizer directory.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

ASSETS = Path(__file__).parent / "assets"

# Qwen2-Audio's added tokens and ids (docs/reference.md §4.2).
QWEN2_AUDIO_ADDED_TOKENS = {
    151643: "<|endoftext|>",
    151644: "<|im_start|>",
    151645: "<|im_end|>",
    151646: "<|AUDIO|>",
    151647: "<|audio_bos|>",
    151648: "<|audio_eos|>",
}


def qwen2_audio_tokenizer_config(eos_token: str = "<|im_end|>", chat_template: str | None = None) -> dict:
    """A tokenizer_config.json shaped like the hub's Qwen2 ones, with Qwen2-Audio's added tokens.

    Instruct checkpoints set eos `<|im_end|>` (the base model `<|endoftext|>`); pad is `<|endoftext|>`; no BOS.
    """
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(i): {
                "content": t,
                "lstrip": False,
                "normalized": False,
                "rstrip": False,
                "single_word": False,
                "special": True,
            }
            for i, t in QWEN2_AUDIO_ADDED_TOKENS.items()
        },
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"],
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": eos_token,
        "errors": "replace",
        "model_max_length": 32768,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    return config


def write_tokenizer_dir(path: str | Path) -> Path:
    """Writes vocab.json, merges.txt and tokenizer_config.json of a Qwen2-Audio tokenizer into `path`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        with gzip.open(ASSETS / "qwen2_tokenizer" / f"{name}.gz", "rb") as src, open(path / name, "wb") as dst:
            shutil.copyfileobj(src, dst)
    (path / "tokenizer_config.json").write_text(json.dumps(qwen2_audio_tokenizer_config(), indent=2))
    return path
