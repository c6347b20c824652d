"""Task presets: a request may say {"id", "task": "asr", "audio": "clip.wav", "lang": "en"} instead of writing the
prompt. Base models get the raw prompt form, Instruct models a chat turn.

Prompt sources. Captioning is the Qwen2-Audio README's own example. The other base-model prompts follow the
forms used by public Qwen2-Audio evaluations (the official eval jsonl files with the exact per-dataset prompts
are not published: REFERENCE 1.7, 8); change them per request with "prompt" when you need another wording.
"""

from __future__ import annotations

import dataclasses

from qwen_audio_jax.errors import PromptError

AUDIO = "<|audio_bos|><|AUDIO|><|audio_eos|>"
LANGUAGES = {"en": "English", "zh": "Chinese", "de": "German", "es": "Spanish", "fr": "French", "it": "Italian",
             "ja": "Japanese", "ko": "Korean", "yue": "Cantonese"}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Task:
    base: str  # raw prompt after the audio placeholder; {lang}, {target} filled from the request
    chat: str  # user text after the audio in an Instruct chat turn
    description: str


TASKS = {
    "asr": Task("Detect the language and recognize the speech: <|{lang}|>",
                "Transcribe the speech in this audio. Output only the transcript.", "speech recognition"),
    "s2tt": Task("Translate the speech into {target}:", "Translate the speech into {target}. Output only the translation.",
                 "speech-to-text translation"),
    "ser": Task("Recognize the emotion with keywords in English:",
                "What emotion does the speaker express? Answer with one word.", "speech emotion recognition"),
    "vsc": Task("Classify the human vocal sound to VocalSound in English:",
                "What kind of vocal sound is this (e.g. cough, laughter, sneeze, sniff, sigh, throat clearing)?",
                "vocal sound classification"),
    "caption": Task("Generate the caption in English:", "Describe this audio in one sentence.", "audio captioning"),
}  # fmt: skip


def expand_task(record: dict, chat: bool) -> dict:
    """Returns a {"messages"} or {"prompt", "audio"} request for a {"task", "audio", ...} record."""
    name = record["task"]
    if name not in TASKS:
        raise PromptError(f"unknown task {name!r}; choose one of {sorted(TASKS)}.")
    audio = record.get("audio")
    if isinstance(audio, list):
        if len(audio) != 1:
            raise PromptError(f"task {name!r} takes exactly one audio file, got {len(audio)}.")
        audio = audio[0]
    if not audio:
        raise PromptError(f'task {name!r} needs an "audio" path.')
    lang = record.get("lang", "en")
    target = LANGUAGES.get(record.get("target", "en"), record.get("target", "English"))
    task = TASKS[name]
    if chat:
        text = task.chat.format(lang=lang, target=target)
        return {"messages": [{"role": "user", "content": [{"type": "audio", "audio": audio},
                                                          {"type": "text", "text": text}]}]}  # fmt: skip
    return {"prompt": AUDIO + task.base.format(lang=lang, target=target), "audio": [audio]}
