"""The Qwen-Audio (v1) tokenizer (`tiktoken`): `qwen.tiktoken` ranks + the special-token table of
docs/reference.md §3.5, reproducing Qwen-Audio's `QWenTokenizer`."""

from __future__ import annotations

import base64
import functools
import unicodedata
from collections.abc import Collection, Iterable
from pathlib import Path

from qwen_audio_jax.choices import QWEN_AUDIO_V1
from qwen_audio_jax.errors import ConfigError
from qwen_audio_jax.text.tokenizer_base import ENDOFTEXT, IM_END, IM_START, PAT_STR, Tokenizer, bytes_to_unicode

V1_AUDIO_PAD = "[[[AUDIO:modality]]]"
V1_AUDIO_START, V1_AUDIO_END = "<audio>", "</audio>"
_V1_LANGUAGES = ("en", "zh", "de", "es", "ko", "fr", "ja", "it")


def v1_special_tokens() -> tuple[str, ...]:
    """Qwen-Audio's special tokens in id order from 151643 (tokenization_qwen.py SPECIAL_TOKENS + AUDIO_ST)."""
    return (
        ENDOFTEXT,
        IM_START,
        IM_END,
        *(f"<|extra_{i}|>" for i in range(205)),
        V1_AUDIO_PAD,
        "<|startoftranscript|>",
        "<|startofanalysis|>",
        "<|translate|>",
        "<|transcribe|>",
        "<|caption|>",
        "<|keyword|>",
        "<|unknown|>",
        *(f"<|{lang}|>" for lang in _V1_LANGUAGES),
        "<|zh_tr|>",
        "<|notimestamps|>",
        "<|sil|>",
        "<|timestamps|>",
        # Spelled with the reference's own float formatting so every string is identical.
        *(f"<|{i * 0.01:.2f}|>" for i in range(3001)),
        "<|caption_audiocaps|>",
        "<|caption_clotho|>",
        "<|audioset_ontology|>",
        "<|caption_plain|>",
        "<|itn|>",
        "<|wo_itn|>",
        "<|startofentityvalue|>",
        "<|endofentityvalue|>",
        "<|startofentitytype|>",
        "<|endofentitytype|>",
        "<|named_entity_recognition|>",
        "<|audio_grounding|>",
        "<|startofword|>",
        "<|endofword|>",
        "<|delim|>",
        "<|emotion_recognition|>",
        "<|music_description|>",
        "<|note_analysis|>",
        "<|pitch|>",
        *(f"<|midi_pitch_{i}|>" for i in range(128)),
        "<|velocity|>",
        *(f"<|midi_velocity_{i}|>" for i in range(128)),
        "<|sonic|>",
        "<|instrument|>",
        "<|speaker_meta|>",
        "<|song_meta|>",
        "<|question|>",
        "<|answer|>",
        "<|choice|>",
        "<|scene|>",
        "<|event|>",
        "<|vocal_classification|>",
        "<|speech_understanding|>",
        "<|scenario|>",
        "<|action|>",
        "<|entities|>",
        "<|speech_edit|>",
        V1_AUDIO_START,
        V1_AUDIO_END,
    )


def _load_tiktoken_ranks(path: Path) -> dict[bytes, int]:

    try:
        with open(path, "rb") as f:
            return {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in f if line.strip())}
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the tiktoken vocabulary {path}: {e}") from e


class QwenAudioV1Tokenizer(Tokenizer):
    """Qwen-Audio (v1) tokenizer: `qwen.tiktoken` ranks + the special-token table of docs/reference.md §3.5."""

    variant = QWEN_AUDIO_V1

    def __init__(self, mergeable_ranks: dict[bytes, int], source: str = "<memory>"):
        import tiktoken

        self.source = source
        self.special_tokens = {t: i for i, t in enumerate(v1_special_tokens(), start=len(mergeable_ranks))}
        self.audio_special_tokens = frozenset(v1_special_tokens()[208:])  # AUDIO_ST (make_context allows these)
        self._enc = tiktoken.Encoding(
            "Qwen", pat_str=PAT_STR, mergeable_ranks=mergeable_ranks, special_tokens=self.special_tokens
        )
        self._ranks = mergeable_ranks
        self._by_id = {i: t for t, i in self.special_tokens.items()}
        self._byte_map = bytes_to_unicode()
        self._unbyte = {c: b for b, c in self._byte_map.items()}
        self._first_special = len(mergeable_ranks)

    @classmethod
    def from_file(cls, path: str | Path) -> QwenAudioV1Tokenizer:
        path = Path(path)
        return cls(_load_tiktoken_ranks(path), source=str(path))

    def encode(self, text: str, allowed_special: str | Collection[str] = "all") -> list[int]:
        """`allowed_special`: the special tokens matched inside text ("all", as Qwen-Audio's tokenizer; v1's
        `make_context` passes only the audio tags). Others are BPE-encoded as plain text."""
        text = unicodedata.normalize("NFC", text)
        allowed = allowed_special if allowed_special == "all" else set(allowed_special)
        return self._enc.encode(text, allowed_special=allowed, disallowed_special=())

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:  # the reference keeps only ids below <|endoftext|>
            ids = [i for i in ids if i < self._first_special]
        return self._enc.decode(ids, errors="replace")

    def token_to_id(self, token: str | bytes) -> int | None:
        if isinstance(token, str):
            if token in self.special_tokens:
                return self.special_tokens[token]
            try:
                token = bytes(self._unbyte[c] for c in token)
            except KeyError:
                return None
        return self._ranks.get(token)

    def id_to_token(self, token_id: int) -> str | None:
        token_id = int(token_id)
        if token_id in self._by_id:
            return self._by_id[token_id]
        if 0 <= token_id < self._first_special:
            return "".join(self._byte_map[b] for b in self._enc.decode_single_token_bytes(token_id))
        return None

    @property
    def vocab_size(self) -> int:
        return self._enc.n_vocab

    @property
    def special_ids(self) -> frozenset[int]:
        return frozenset(self._by_id)

    @functools.cached_property
    def max_token_bytes(self) -> int:
        return max(1, *(len(b) for b in self._ranks), *(len(t.encode("utf-8")) for t in self.special_tokens))

    # `eod_id` is what both the base and the chat model emit last; the official eval also pads with it.
    eos_id = property(lambda self: self.endoftext_id)
    pad_id = property(lambda self: self.endoftext_id)

    # v1's model overwrites the embeddings of the whole <audio> pad... </audio> span (docs/reference.md §3.3).
    audio_token_id = property(lambda self: self.special_tokens[V1_AUDIO_PAD])
    audio_bos_id = property(lambda self: self.special_tokens[V1_AUDIO_START])
    audio_eos_id = property(lambda self: self.special_tokens[V1_AUDIO_END])
