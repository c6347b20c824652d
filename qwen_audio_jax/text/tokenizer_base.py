"""What every tokenizer of this package provides, and what both generations share: the Qwen BPE's pre-tokenizer
regex, the special-token spellings, GPT-2's byte-to-unicode map (docs/reference.md §4.1).

Special and added tokens written inside text are always matched as single tokens (transformers' default
`split_special_tokens=False`; Qwen-Audio's `allowed_special="all"`). No BOS is ever prepended.
"""

from __future__ import annotations

import abc
import functools
import math
import unicodedata
from collections.abc import Iterable

from qwen_audio_jax.errors import ConfigError

# Qwen2 / Qwen-Audio pre-tokenizer regex (docs/reference.md §4.1): digits split one by one, NFC applied first.
PAT_STR = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""  # noqa: E501

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
    Subclasses also provide the ids the model needs as properties: `eos_id`, `pad_id` (the ids that end
    generation come from the model config: `ModelConfig.stop_ids`), `audio_token_id` (repeated N times per clip; the
    encoder output replaces its embeddings),
    `audio_bos_id` / `audio_eos_id` (around each clip's audio tokens).
    """

    variant: str  # one of choices.VARIANTS
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

    @property
    @abc.abstractmethod
    def max_token_bytes(self) -> int:
        """Bytes of text the longest token covers (Qwen2's BPE: 128, a run of spaces)."""

    def min_tokens(self, texts: Iterable[str]) -> int:
        """A lower bound on the tokens of `texts` written one after the other, without tokenizing them: every token
        covers between 1 and `max_token_bytes` bytes of the NFC-normalised text (the byte-level BPE, special tokens
        included), so a text of B bytes is at least B / max_token_bytes tokens. Costs a pass over the text (and a
        copy only for text that is not already NFC or not ASCII), where tokenizing costs ~200 bytes per byte."""
        texts = list(texts)
        nbytes = 0
        for text in texts:
            if not unicodedata.is_normalized("NFC", text):
                text = unicodedata.normalize("NFC", text)
            nbytes += len(text) if text.isascii() else len(text.encode("utf-8", errors="surrogatepass"))
        # Normalising the texts apart may compose a few bytes fewer at each seam than the joined text has.
        nbytes -= 8 * max(0, len(texts) - 1)
        return max(0, math.ceil(nbytes / self.max_token_bytes))

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
