"""Tokenizers for Qwen2-Audio (Hugging Face `tokenizers`) and Qwen-Audio v1 (`tiktoken`), behind one interface.

Both models share the same 151,643 byte-level BPE ranks (docs/reference.md §4.1); they differ in the special tokens
appended after them. `Qwen2AudioTokenizer` reproduces transformers' `Qwen2TokenizerFast.from_pretrained(dir)`
(and the slow `Qwen2Tokenizer`, which agrees on these files); `QwenAudioV1Tokenizer` reproduces Qwen-Audio's
`QWenTokenizer` (docs/reference.md §3.5). `load_tokenizer(model_dir)` picks one from the files present.

Special and added tokens written inside text are always matched as single tokens (transformers'
default `split_special_tokens=False`; Qwen-Audio's `allowed_special="all"`). No BOS is ever prepended.
"""

from __future__ import annotations

import abc
import functools
import json
import unicodedata
from collections.abc import Collection, Iterable
from pathlib import Path

from qwen_audio_jax.errors import ConfigError

# Qwen2 / Qwen-Audio pre-tokenizer regex (docs/reference.md §4.1): digits split one by one, NFC applied first.
PAT_STR = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
AUDIO_TOKEN, AUDIO_BOS, AUDIO_EOS = "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"

# The transformers special-token attributes, in the order its `special_tokens_map` lists them.
_SPECIAL_ATTRS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable-character map; `vocab.json` keys are token bytes rendered with it."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class Tokenizer(abc.ABC):
    """What the processor, generation and training code need from a tokenizer.

    Token strings are the Hugging Face spelling: special tokens as written (`<|im_end|>`), ordinary tokens as
    their bytes rendered with `bytes_to_unicode` (`"Ġhello"`), so both families name shared ranks alike.
    Subclasses also provide the ids the model needs as properties: `eos_id`, `pad_id`, `stop_ids` (sorted ids that
    end generation), `audio_token_id` (repeated N times per clip; the encoder output replaces its embeddings),
    `audio_bos_id` / `audio_eos_id` (around each clip's audio tokens).
    """

    variant: str  # "qwen2_audio" or "qwen_audio_v1"
    source: str = "<memory>"  # where the vocabulary was read from (for error messages)

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Text -> ids (NFC-normalised; special/added tokens inside the text become single ids)."""

    @abc.abstractmethod
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Ids -> text; invalid UTF-8 byte runs decode to U+FFFD, as in the references."""

    @abc.abstractmethod
    def token_to_id(self, token: str) -> int | None:
        """Id of one token string, or None if the vocabulary has no such token."""

    @abc.abstractmethod
    def id_to_token(self, token_id: int) -> str | None:
        """Token string of one id, or None if out of range."""

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids, added/special tokens included (the model's embedding may have more rows)."""

    @property
    @abc.abstractmethod
    def special_ids(self) -> frozenset[int]:
        """Ids removed by `decode(..., skip_special_tokens=True)`."""

    def __len__(self) -> int:
        return self.vocab_size

    def _required_id(self, token: str, role: str) -> int:
        token_id = self.token_to_id(token)
        if token_id is None:
            raise ConfigError(
                f"the tokenizer ({self.source}) has no {token} token ({role}); "
                "is this a Qwen2-Audio / Qwen-Audio checkpoint?"
            )
        return token_id

    endoftext_id = property(lambda self: self._required_id(ENDOFTEXT, "end of text"))
    im_start_id = property(lambda self: self._required_id(IM_START, "chat turn start"))
    im_end_id = property(lambda self: self._required_id(IM_END, "chat turn end"))


# --------------------------------------------------------------------------------------------------------------
# Qwen2-Audio: Hugging Face tokenizers
# --------------------------------------------------------------------------------------------------------------


def _token_content(value) -> str | None:
    """A special-token value from tokenizer_config.json: a string, an AddedToken dict, or null."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read tokenizer file {path}: {e}") from e


class Qwen2AudioTokenizer(Tokenizer):
    """Qwen2-family byte-level BPE built exactly as transformers' `Qwen2TokenizerFast` builds it."""

    variant = "qwen2_audio"

    def __init__(self, tokenizer, config: dict | None = None, source: str = "<memory>"):
        """`tokenizer`: a `tokenizers.Tokenizer` with the added tokens already in; `config`: tokenizer_config."""
        self._tok = tokenizer
        self.config = dict(config or {})
        self.source = source
        self._vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
        self._special = frozenset(i for i, t in tokenizer.get_added_tokens_decoder().items() if t.special)

    # -- construction ---------------------------------------------------------------------------------------------

    @classmethod
    def from_dir(cls, path: str | Path) -> Qwen2AudioTokenizer:
        """Load `tokenizer.json` if present, else `vocab.json` + `merges.txt`; then the config's added tokens."""
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        config = _read_json(path / "tokenizer_config.json") if (path / "tokenizer_config.json").is_file() else {}
        if (path / "special_tokens_map.json").is_file():  # legacy file; the config's own values win
            for key, value in _read_json(path / "special_tokens_map.json").items():
                config.setdefault(key, value)
        for key in ("unk_token", "eos_token", "pad_token"):  # Qwen2Tokenizer's defaults when a config omits them
            config.setdefault(key, ENDOFTEXT)
        if (path / "tokenizer.json").is_file():
            try:
                tok = HFTokenizer.from_file(str(path / "tokenizer.json"))
            except Exception as e:  # the Rust side raises plain Exceptions
                raise ConfigError(f"cannot parse {path / 'tokenizer.json'}: {e}") from e
        elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            tok = build_bpe(path / "vocab.json", path / "merges.txt")
        else:
            raise ConfigError(f"{path} has neither tokenizer.json nor vocab.json + merges.txt")
        _add_configured_tokens(tok, config, path)
        return cls(tok, config, source=str(path))

    # -- interface --------------------------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        # add_special_tokens only triggers the post-processor, which for Qwen2 adds nothing (no BOS).
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        text = self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        if self.config.get("clean_up_tokenization_spaces", False):  # False for every Qwen2 checkpoint
            text = _clean_up_tokenization(text)
        return text

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(int(token_id))

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def special_ids(self) -> frozenset[int]:
        return self._special

    @property
    def special_tokens_map(self) -> dict:
        """As transformers' `special_tokens_map` (passed to chat templates as variables)."""
        out = {k: _token_content(self.config[k]) for k in _SPECIAL_ATTRS if _token_content(self.config.get(k))}
        extra = [_token_content(t) for t in self.config.get("additional_special_tokens") or []]
        if extra:
            out["additional_special_tokens"] = extra
        return out

    def _attr_id(self, attr: str) -> int:
        token = _token_content(self.config.get(attr))
        if not token:
            raise ConfigError(f"the tokenizer config in {self.source} sets no {attr}")
        return self._required_id(token, attr)

    # Qwen2's default eos is <|endoftext|> (base models); Instruct configs set <|im_end|>.
    eos_id = property(lambda self: self._attr_id("eos_token"))
    # Padding is masked out, so a config without a pad token falls back to <|endoftext|>.
    pad_id = property(lambda self: self._attr_id("pad_token") if _token_content(self.config.get("pad_token"))
                      else self.endoftext_id)

    @property
    def stop_ids(self) -> tuple[int, ...]:
        # Base models end with <|endoftext|>, Instruct turns with <|im_end|>; either one ends a sequence.
        ids = {self.eos_id}
        ids.update(i for i in (self.token_to_id(ENDOFTEXT), self.token_to_id(IM_END)) if i is not None)
        return tuple(sorted(ids))

    audio_token_id = property(lambda self: self._required_id(AUDIO_TOKEN, "audio placeholder"))
    audio_bos_id = property(lambda self: self._required_id(AUDIO_BOS, "audio start"))
    audio_eos_id = property(lambda self: self._required_id(AUDIO_EOS, "audio end"))


def build_bpe(vocab_file: str | Path, merges_file: str | Path):
    """The `tokenizers.Tokenizer` that transformers' `Qwen2Converter` builds from vocab.json + merges.txt."""
    from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    vocab = _read_json(Path(vocab_file))
    merges = []
    with open(merges_file, encoding="utf-8") as f:
        for i, line in enumerate(f):
            line = line.strip()  # as Qwen2Tokenizer: skip the "#version" header and blank lines
            if (i == 0 and line.startswith("#version:")) or not line:
                continue
            merges.append(tuple(line.split()))
    tok = HFTokenizer(BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None, continuing_subword_prefix="",
                          end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PAT_STR), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _add_configured_tokens(tok, config: dict, path: Path) -> None:
    """Add tokenizer_config's added tokens (legacy: added_tokens.json), then any special-token attribute not yet
    known, in the order transformers' fast tokenizer adds them; ids must land where the config says."""
    from tokenizers import AddedToken

    entries: list[tuple[int, AddedToken]] = []
    if "added_tokens_decoder" in config:
        for idx, t in config["added_tokens_decoder"].items():
            t = {k: v for k, v in t.items() if k != "__type"}
            entries.append((int(idx), AddedToken(t.pop("content"), **t)))
    elif (path / "added_tokens.json").is_file():
        specials = {_token_content(config.get(k)) for k in _SPECIAL_ATTRS}
        specials.update(_token_content(t) for t in config.get("additional_special_tokens") or [])
        for content, idx in _read_json(path / "added_tokens.json").items():
            special = content in specials
            entries.append((int(idx), AddedToken(content, lstrip=False, rstrip=False, normalized=not special,
                                                 special=special)))
    present = tok.get_added_tokens_decoder()
    for idx, token in sorted(entries, key=lambda e: e[0]):
        if idx in present:
            continue
        (tok.add_special_tokens if token.special else tok.add_tokens)([token])
        got = tok.token_to_id(token.content)
        if got != idx:
            raise ConfigError(
                f"{path}: added token {token.content!r} is declared with id {idx} but lands at id {got}; "
                "the added-token ids in tokenizer_config.json must follow the vocabulary without gaps"
            )
    # transformers also adds every special-token attribute (eos, pad, additional_special_tokens...) it lacks.
    wanted = [_token_content(config.get(k)) for k in _SPECIAL_ATTRS]
    wanted += [_token_content(t) for t in config.get("additional_special_tokens") or []]
    for content in wanted:
        if content and tok.token_to_id(content) is None:
            tok.add_special_tokens([AddedToken(content, lstrip=False, rstrip=False, normalized=False, special=True)])


def _clean_up_tokenization(text: str) -> str:
    """transformers' `clean_up_tokenization` (only used when a config turns it on)."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                 (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text


# --------------------------------------------------------------------------------------------------------------
# Qwen-Audio v1: tiktoken
# --------------------------------------------------------------------------------------------------------------

V1_AUDIO_PAD = "[[[AUDIO:modality]]]"
V1_AUDIO_START, V1_AUDIO_END = "<audio>", "</audio>"
_V1_LANGUAGES = ("en", "zh", "de", "es", "ko", "fr", "ja", "it")


def v1_special_tokens() -> tuple[str, ...]:
    """Qwen-Audio's special tokens in id order from 151643 (tokenization_qwen.py SPECIAL_TOKENS + AUDIO_ST)."""
    return (
        ENDOFTEXT, IM_START, IM_END, *(f"<|extra_{i}|>" for i in range(205)),
        V1_AUDIO_PAD, "<|startoftranscript|>", "<|startofanalysis|>",
        "<|translate|>", "<|transcribe|>", "<|caption|>", "<|keyword|>",
        "<|unknown|>", *(f"<|{lang}|>" for lang in _V1_LANGUAGES), "<|zh_tr|>",
        "<|notimestamps|>", "<|sil|>", "<|timestamps|>",
        # Spelled with the reference's own float formatting so every string is identical.
        *(f"<|{i * 0.01:.2f}|>" for i in range(3001)),
        "<|caption_audiocaps|>", "<|caption_clotho|>", "<|audioset_ontology|>", "<|caption_plain|>",
        "<|itn|>", "<|wo_itn|>", "<|startofentityvalue|>", "<|endofentityvalue|>", "<|startofentitytype|>",
        "<|endofentitytype|>", "<|named_entity_recognition|>", "<|audio_grounding|>", "<|startofword|>",
        "<|endofword|>", "<|delim|>", "<|emotion_recognition|>", "<|music_description|>", "<|note_analysis|>",
        "<|pitch|>", *(f"<|midi_pitch_{i}|>" for i in range(128)),
        "<|velocity|>", *(f"<|midi_velocity_{i}|>" for i in range(128)),
        "<|sonic|>", "<|instrument|>", "<|speaker_meta|>", "<|song_meta|>", "<|question|>", "<|answer|>",
        "<|choice|>", "<|scene|>", "<|event|>", "<|vocal_classification|>", "<|speech_understanding|>",
        "<|scenario|>", "<|action|>", "<|entities|>", "<|speech_edit|>", V1_AUDIO_START, V1_AUDIO_END,
    )


def _load_tiktoken_ranks(path: Path) -> dict[bytes, int]:
    import base64

    try:
        with open(path, "rb") as f:
            return {base64.b64decode(tok): int(rank) for tok, rank in (line.split() for line in f if line.strip())}
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read the tiktoken vocabulary {path}: {e}") from e


class QwenAudioV1Tokenizer(Tokenizer):
    """Qwen-Audio (v1) tokenizer: `qwen.tiktoken` ranks + the special-token table of docs/reference.md §3.5."""

    variant = "qwen_audio_v1"

    def __init__(self, mergeable_ranks: dict[bytes, int], source: str = "<memory>"):
        import tiktoken

        self.source = source
        self.special_tokens = {t: i for i, t in enumerate(v1_special_tokens(), start=len(mergeable_ranks))}
        self.audio_special_tokens = frozenset(v1_special_tokens()[208:])  # AUDIO_ST (make_context allows these)
        self._enc = tiktoken.Encoding("Qwen", pat_str=PAT_STR, mergeable_ranks=mergeable_ranks,
                                      special_tokens=self.special_tokens)
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

    # `eod_id` is what both the base and the chat model emit last; the official eval also pads with it.
    eos_id = property(lambda self: self.endoftext_id)
    pad_id = property(lambda self: self.endoftext_id)

    @property
    def stop_ids(self) -> tuple[int, ...]:
        # chatml stop words [[im_end], [im_start]] (qwen_generation_utils.get_stop_words_ids) plus eod.
        return tuple(sorted((self.endoftext_id, self.im_start_id, self.im_end_id)))

    # v1's model overwrites the embeddings of the whole <audio> pad... </audio> span (docs/reference.md §3.3).
    audio_token_id = property(lambda self: self.special_tokens[V1_AUDIO_PAD])
    audio_bos_id = property(lambda self: self.special_tokens[V1_AUDIO_START])
    audio_eos_id = property(lambda self: self.special_tokens[V1_AUDIO_END])


def load_tokenizer(model_dir: str | Path) -> Tokenizer:
    """The tokenizer of a model directory: tokenizer.json / vocab.json -> Qwen2-Audio, qwen.tiktoken -> v1."""
    model_dir = Path(model_dir)
    if (model_dir / "tokenizer.json").is_file() or (model_dir / "vocab.json").is_file():
        return Qwen2AudioTokenizer.from_dir(model_dir)
    if (model_dir / "qwen.tiktoken").is_file():
        return QwenAudioV1Tokenizer.from_file(model_dir / "qwen.tiktoken")
    raise ConfigError(
        f"no tokenizer files in {model_dir}: expected tokenizer.json, vocab.json + merges.txt (Qwen2-Audio) "
        "or qwen.tiktoken (Qwen-Audio v1)"
    )
