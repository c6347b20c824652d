"""The Qwen2-Audio tokenizer (Hugging Face `tokenizers`): reproduces transformers'
`Qwen2TokenizerFast.from_pretrained(dir)` (and the slow `Qwen2Tokenizer`, which agrees on these files) from a
checkpoint's `tokenizer.json` or `vocab.json` + `merges.txt` and the added tokens of `tokenizer_config.json`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from pathlib import Path

from qwen_audio_jax.choices import QWEN2_AUDIO
from qwen_audio_jax.errors import ConfigError
from qwen_audio_jax.text.tokenizer_base import (
    _SPECIAL_ATTRS,
    AUDIO_BOS,
    AUDIO_EOS,
    AUDIO_TOKEN,
    ENDOFTEXT,
    PAT_STR,
    Tokenizer,
    bytes_to_unicode,
)


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

    variant = QWEN2_AUDIO

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

    @functools.cached_property
    def max_token_bytes(self) -> int:
        byte_chars = set(bytes_to_unicode().values())  # a byte-level token's character is one byte of text
        added = {t.content for t in self._tok.get_added_tokens_decoder().values()}

        def covered(token: str) -> int:  # added tokens match their text as written
            if token in added:
                return len(token.encode("utf-8"))
            return sum(1 if c in byte_chars else len(c.encode("utf-8")) for c in token)

        return max(1, *(covered(t) for t in self._tok.get_vocab(with_added_tokens=True)))

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
    pad_id = property(
        lambda self: self._attr_id("pad_token") if _token_content(self.config.get("pad_token")) else self.endoftext_id
    )

    audio_token_id = property(lambda self: self._required_id(AUDIO_TOKEN, "audio placeholder"))
    audio_bos_id = property(lambda self: self._required_id(AUDIO_BOS, "audio start"))
    audio_eos_id = property(lambda self: self._required_id(AUDIO_EOS, "audio end"))


def qwen2_bpe(vocab: dict | None = None, merges: list | None = None):
    """An empty (vocab None: to be trained) or given byte-level BPE with Qwen2's pipeline: NFC, the Qwen2
    pre-tokenizer regex, byte-level decoding; what transformers' `Qwen2Converter` builds."""
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers.models import BPE

    tok = HFTokenizer(
        BPE(
            vocab=vocab,
            merges=merges,
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    )
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PAT_STR), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def build_bpe(vocab_file: str | Path, merges_file: str | Path):
    """The `tokenizers.Tokenizer` that transformers' `Qwen2Converter` builds from vocab.json + merges.txt."""
    vocab = _read_json(Path(vocab_file))
    merges = []
    with open(merges_file, encoding="utf-8") as f:
        for i, line in enumerate(f):
            line = line.strip()  # as Qwen2Tokenizer: skip the "#version" header and blank lines
            if (i == 0 and line.startswith("#version:")) or not line:
                continue
            merges.append(tuple(line.split()))
    return qwen2_bpe(vocab, merges)


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
            entries.append(
                (int(idx), AddedToken(content, lstrip=False, rstrip=False, normalized=not special, special=special))
            )
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
    for a, b in (
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ):
        text = text.replace(a, b)
    return text
