"""Task presets: a request may say {"id", "task": "asr", "audio": "clip.wav", "lang": "en"} instead of writing the
prompt. The one home of the reference prompts, used by `generate` and by `eval` (docs/reference.md,
"Evaluation prompts").

* Qwen2-Audio base models: `<|audio_bos|><|AUDIO|><|audio_eos|>` + the task prompt. Captioning is the
  Qwen2-Audio README's example; the other prompts follow the forms of the official evaluation (its per-dataset
  prompt files are not published; a request's own "prompt" overrides the preset).
* Qwen-Audio v1 base models: `<audio>PATH</audio>` + the hierarchical task tags of Qwen-Audio's eval scripts.
* Chat checkpoints (Qwen2-Audio-Instruct, Qwen-Audio-Chat): one user turn with the audio and an instruction.
"""

from __future__ import annotations

import dataclasses

from qwen_audio_jax.errors import PromptError

AUDIO = "<|audio_bos|><|AUDIO|><|audio_eos|>"
LANGUAGES = {
    "en": "English",
    "zh": "Chinese",
    "de": "German",
    "es": "Spanish",
    "fr": "French",
    "it": "Italian",
    "ja": "Japanese",
    "ko": "Korean",
    "yue": "Cantonese",
}
V1_LANGUAGES = ("en", "zh", "de", "es", "ko", "fr", "ja", "it")  # Qwen-Audio's language tags
CAPTION_STYLES = ("clotho", "audiocaps", "plain")
TASK_KEYS = frozenset({"task", "audio", "lang", "target", "question", "style"})


@dataclasses.dataclass(frozen=True)
class Task:
    base: str  # Qwen2-Audio base model: text after the audio placeholder
    v1: str  # Qwen-Audio v1 base model: tags after <audio>PATH</audio>
    chat: str  # chat checkpoints: the user's instruction after the audio
    description: str


TASKS = {
    "asr": Task(
        "Detect the language and recognize the speech: <|{lang}|>",
        "<|startoftranscript|><|{lang}|><|transcribe|><|{lang}|><|notimestamps|><|wo_itn|>",
        "Transcribe the speech in this audio. Output only the transcript.",
        "speech recognition",
    ),
    "s2tt": Task(
        "Translate the speech into {target_name}:",
        "<|startoftranscript|><|{lang}|><|translate|><|{target}|><|notimestamps|><|itn|>",
        "Translate the speech into {target_name}. Output only the translation.",
        "speech-to-text translation",
    ),
    "ser": Task(
        "Recognize the emotion with keywords in English:",
        "<|startofanalysis|><|en|><|keyword|><|en|><|notimestamps|><|emotion_recognition|>",
        "What emotion does the speaker express? Answer with one word.",
        "speech emotion recognition",
    ),
    "vsc": Task(
        "Classify the human vocal sound to VocalSound in English:",
        "<|startofanalysis|><|en|><|keyword|><|en|><|notimestamps|><|vocal_classification|>",
        "What kind of vocal sound is this (e.g. cough, laughter, sneeze, sniff, sigh, throat clearing)?",
        "vocal sound classification",
    ),
    "caption": Task(
        "Generate the caption in English:",
        "<|startofanalysis|><|unknown|><|caption|><|en|><|notimestamps|><|caption_{style}|>",
        "Describe this audio in one sentence.",
        "audio captioning",
    ),
    "aqa": Task(
        "{question}",
        "<|startofanalysis|><|en|><|question|>{question}<|answer|>",
        "{question}",
        "audio question answering",
    ),
    "asc": Task(
        "Classify the acoustic scene in English:",
        "<|startofanalysis|><|unknown|><|keyword|><|en|><|notimestamps|><|scene|>",
        "Which acoustic scene is this? Answer with a few words.",
        "acoustic scene classification",
    ),
    "note": Task(
        "Analyze the musical note in English:",
        "<|startofanalysis|><|unknown|><|keyword|><|en|><|notimestamps|><|note_analysis|>",
        "Which instrument plays this note, and at what pitch and velocity?",
        "musical note analysis",
    ),
    "srwt": Task(
        "Detect the language and recognize the speech with word timestamps: <|{lang}|>",
        "<|startoftranscript|><|{lang}|><|transcribe|><|{lang}|><|timestamps|><|0.00|>",
        "Transcribe the speech with the start and end time of each word.",
        "speech recognition with word-level timestamps",
    ),
}


def _audio_path(record: dict, name: str) -> str:
    audio = record.get("audio")
    if isinstance(audio, list):
        if len(audio) != 1:
            raise PromptError(f"task {name!r} takes exactly one audio file, got {len(audio)}.")
        audio = audio[0]
    if not isinstance(audio, str) or not audio:
        raise PromptError(f'task {name!r} needs an "audio" path.')
    return audio


def _fields(record: dict, name: str, v1: bool) -> dict:
    lang = record.get("lang", "en")
    known = V1_LANGUAGES if v1 else tuple(LANGUAGES)
    if lang not in known:
        raise PromptError(f"unknown lang {lang!r} for task {name!r}; choose one of {', '.join(known)}.")
    target = record.get("target", "en")
    if name == "s2tt" and target not in known:
        raise PromptError(f"unknown target {target!r} for task 's2tt'; choose one of {', '.join(known)}.")
    style = record.get("style", "clotho")
    if style not in CAPTION_STYLES:
        raise PromptError(f"unknown caption style {style!r}; choose one of {', '.join(CAPTION_STYLES)}.")
    question = record.get("question")
    if name == "aqa" and (not isinstance(question, str) or not question.strip()):
        raise PromptError('task "aqa" needs a "question" string.')
    return {
        "lang": lang,
        "target": target,
        "target_name": LANGUAGES.get(target, target),
        "style": style,
        "question": question or "",
    }


def expand_task(record: dict, *, chat: bool, v1: bool) -> dict:
    """A {"task", "audio", ...} record -> a {"messages"} or {"prompt", "audio"} request (other keys kept)."""
    name = record.get("task")
    if name not in TASKS:
        raise PromptError(f"unknown task {name!r}; choose one of {', '.join(sorted(TASKS))}.")
    task, audio = TASKS[name], _audio_path(record, name)
    fields = _fields(record, name, v1)
    rest = {k: v for k, v in record.items() if k not in TASK_KEYS}
    if chat:
        content = [{"type": "audio", "audio": audio}, {"type": "text", "text": task.chat.format(**fields)}]
        return {**rest, "messages": [{"role": "user", "content": content}]}
    if v1:
        return {**rest, "prompt": f"<audio>{audio}</audio>" + task.v1.format(**fields)}
    return {**rest, "prompt": AUDIO + task.base.format(**fields), "audio": [audio]}
