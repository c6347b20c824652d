"""Prompts written for the other model generation: a Qwen-Audio (v1) prompt (`<audio>PATH</audio>`, the task tags
`<|startoftranscript|>`...) given to a Qwen2-Audio model, or a Qwen2-Audio prompt (`<|audio_bos|><|AUDIO|>
<|audio_eos|>`) given to a v1 model. Neither tokenizer knows the other's tags, so such a prompt would be read as
plain text with its audio ignored, and the model would answer something: it is refused instead, in one line.

A tag the model's own tokenizer has as a special token (a fine-tune that added it) is the model's own, not foreign.
"""

from __future__ import annotations

from collections.abc import Iterable

from qwen_audio_jax.errors import PromptError
from qwen_audio_jax.text.tokenizer_base import AUDIO_BOS, AUDIO_EOS, AUDIO_TOKEN, Tokenizer

# v1's audio spans and task tags (the language tags are left out: Qwen2-Audio's prompts write `<|en|>` as text)
V1_TAGS = (
    "<audio>",
    "</audio>",
    "<|startoftranscript|>",
    "<|startofanalysis|>",
    "<|transcribe|>",
    "<|translate|>",
    "<|caption|>",
    "<|keyword|>",
    "<|notimestamps|>",
    "<|timestamps|>",
    "<|itn|>",
    "<|wo_itn|>",
)
V2_TAGS = (AUDIO_BOS, AUDIO_TOKEN, AUDIO_EOS)


def check_prompt_generation(texts: str | Iterable[str], tokenizer: Tokenizer, v1: bool) -> None:
    """Raises PromptError when `texts` (a raw prompt, or the texts of chat turns as a list) carry the other
    generation's tags."""
    chat = not isinstance(texts, str)
    texts = [t for t in texts if isinstance(t, str)] if chat else [texts]
    found = [tag for tag in (V2_TAGS if v1 else V1_TAGS) if any(tag in t for t in texts)]
    found = [tag for tag in found if tokenizer.token_to_id(tag) not in tokenizer.special_ids]
    if not found:
        return
    what = f"the chat turns are written for {'Qwen2-Audio' if v1 else 'Qwen-Audio (v1)'} (they have"
    if not chat:
        what = f"the prompt is written for {'Qwen2-Audio' if v1 else 'Qwen-Audio (v1)'} (it has"
    model = "a Qwen-Audio (v1) model" if v1 else "a Qwen2-Audio model"
    if chat:
        fix = 'give each clip as a content part {"type": "audio", "audio": PATH}, which fits either generation.'
    elif v1:
        fix = 'its prompts name each clip as <audio>PATH</audio> (or use a "task" preset, which fits either).'
    else:
        fix = (
            "its prompts put <|audio_bos|><|AUDIO|><|audio_eos|> where each clip goes, the clips listed in "
            '"audio" (or use a "task" preset, which fits either).'
        )
    raise PromptError(f"{what} {', '.join(found)}), but this is {model}: {fix}")


def message_texts(messages) -> list[str]:
    """The text of chat turns (string contents and "text" parts); anything malformed is left to the renderer."""
    out = []
    for m in messages if isinstance(messages, (list, tuple)) else ():
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            out.append(content)
        elif isinstance(content, (list, tuple)):
            out += [c["text"] for c in content if isinstance(c, dict) and isinstance(c.get("text"), str)]
    return out
