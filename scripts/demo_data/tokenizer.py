"""The demo model's tokenizer: the corpus text it is trained on, and a Qwen2-style byte-level BPE."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|AUDIO|>",
    "<|audio_bos|>",
    "<|audio_eos|>",
    "<|en|>",
]


def tokenizer_texts(records: list[dict]) -> list[str]:
    """Every piece of text the model sees or writes: rendered prompts (without audio) and answers."""
    sys.path.insert(0, str(REPO))
    from qwen_audio_jax.text.chat_template import render_chat

    texts = []
    for r in records:
        if "messages" in r:
            texts.append(render_chat(r["messages"], add_generation_prompt=False))
        else:
            texts += [r["prompt"], r.get("completion", "")]
        for key in ("chosen", "rejected"):
            if key in r:
                texts.append(r[key])
    # A little general text so that unseen words still tokenize into sensible pieces.
    texts += [
        "The quick brown fox jumps over the lazy dog. 0123456789 Hello, world! What is this? Yes. No.",
        "Audio 1: Audio 2: Audio 3: system user assistant You are a helpful assistant.",
        "Name three musical instruments. Which clip is louder? Transcribe, translate, describe, classify.",
    ]
    return texts


def build_tokenizer(texts: list[str], out_dir: Path, vocab_size: int = 640) -> Path:
    """A Qwen2-style byte-level BPE (same pre-tokenizer regex, NFC, byte-level decoder) with the Qwen2-Audio
    special tokens, written as tokenizer.json + tokenizer_config.json + chat_template.json."""
    from tokenizers import AddedToken, pre_tokenizers
    from tokenizers.trainers import BpeTrainer

    sys.path.insert(0, str(REPO))
    from qwen_audio_jax.text.chat_template import DEFAULT_CHAT_TEMPLATE
    from qwen_audio_jax.text.tokenizer_qwen2 import qwen2_bpe

    tok = qwen2_bpe()  # empty, trained below
    trainer = BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Added tokens split the text before BPE runs (as at encode time), so train on the pieces between them.
    splitter = re.compile("|".join(re.escape(s) for s in SPECIAL_TOKENS))
    clean = [piece for t in texts for piece in splitter.split(t) if piece]
    tok.train_from_iterator(clean, trainer=trainer)
    base = tok.get_vocab_size(with_added_tokens=False)
    tok.add_special_tokens(
        [
            AddedToken(s, lstrip=False, rstrip=False, normalized=False, single_word=False, special=True)
            for s in SPECIAL_TOKENS
        ]
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    added = {
        str(tok.token_to_id(s)): {
            "content": s,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for s in SPECIAL_TOKENS
    }
    assert [int(i) for i in added] == list(range(base, base + len(SPECIAL_TOKENS))), added
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": SPECIAL_TOKENS[1:],  # all but <|endoftext|> (the pad token)
        "bos_token": None,
        "chat_template": DEFAULT_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 8192,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    # The processor-level template file (what Qwen2AudioProcessor and our Processor read).
    (out_dir / "chat_template.json").write_text(json.dumps({"chat_template": DEFAULT_CHAT_TEMPLATE}, indent=2) + "\n")
    return out_dir
