"""Prompts in the reference styles (base-model and chat), the answers, plausible mistakes (DPO's rejected answers),
SFT records, and the held-out `generate` requests with their references."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .corpus import ANIMALS, COLORS, COUNT_WORDS, DIGITS, NOTE_NAMES, OBJECTS, VERBS

AUDIO = "<|audio_bos|><|AUDIO|><|audio_eos|>"
ASR_PROMPT = AUDIO + "Detect the language and recognize the speech: <|en|>"
CAPTION_PROMPT = AUDIO + "Generate the caption in English:"
ASR_QUESTIONS = [
    "Transcribe the speech in this audio. Output only the transcript.",  # the `asr` task preset
    "What does the speaker say?",
    "Please transcribe this recording.",
]
SOUND_QUESTIONS = [
    "What sound is this?",
    "What do you hear in this audio?",
    "Describe this audio in one sentence.",
]  # the last one is the `caption` task preset
NOTE_QUESTION = "Which musical note is this tone?"
DIRECTION_QUESTION = "Is the chirp going up or down?"
COUNT_QUESTION = "How many beeps are there?"


def sound_answer(clip: dict) -> str:
    kind = clip["kind"]
    if kind in ("digits", "words"):
        return f'A person saying "{clip["text"]}".'
    if kind == "tone":
        return f"A steady tone at the note {clip['note']}."
    if kind == "chirp":
        return f"A chirp sweeping {clip['direction']}."
    if kind == "noise":
        return "A short burst of noise."
    return "A single beep." if clip["count"] == 1 else f"{COUNT_WORDS[clip['count']]} beeps."


def specific_question(clip: dict) -> tuple[str, str] | None:
    kind = clip["kind"]
    if kind == "tone":
        return NOTE_QUESTION, f"{clip['note']}."
    if kind == "chirp":
        return DIRECTION_QUESTION, f"{clip['direction'].capitalize()}."
    if kind == "beeps":
        return COUNT_QUESTION, f"{COUNT_WORDS[clip['count']]}."
    return None


def chat(path: str, question: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "audio", "audio": path}, {"type": "text", "text": question}]}]


def prompt_options(clip: dict) -> list[tuple[str, dict, str]]:
    """(name, request, answer) for every prompt this clip can be asked with."""
    p = clip["path"]
    if clip["kind"] in ("digits", "words"):
        opts = [("asr-base", {"prompt": ASR_PROMPT, "audio": [p]}, clip["text"])]
        opts += [(f"asr-chat{i}", {"messages": chat(p, q)}, clip["text"]) for i, q in enumerate(ASR_QUESTIONS)]
        opts += [("what-chat", {"messages": chat(p, SOUND_QUESTIONS[0])}, sound_answer(clip))]
        return opts
    opts = [("caption-base", {"prompt": CAPTION_PROMPT, "audio": [p]}, sound_answer(clip))]
    opts += [(f"what-chat{i}", {"messages": chat(p, q)}, sound_answer(clip)) for i, q in enumerate(SOUND_QUESTIONS)]
    spec = specific_question(clip)
    if spec:
        opts.append(("specific-chat", {"messages": chat(p, spec[0])}, spec[1]))
    return opts


def pick_prompts(clip: dict, rng: np.random.Generator, k: int) -> list[tuple[str, dict, str]]:
    opts = prompt_options(clip)
    if clip["kind"] in ("digits", "words"):  # mostly transcription; the base ASR prompt and the preset most often
        weights = np.array([3.0, 2.0, 1.0, 1.0, 1.0])
    else:
        weights = np.array([1.5, 2.0, 1.0, 1.0] + ([1.5] if len(opts) == 5 else []))
    idx = rng.choice(len(opts), size=k, replace=False, p=weights / weights.sum())
    return [opts[i] for i in sorted(idx)]


def mistake(clip: dict, answer: str, rng: np.random.Generator) -> str:
    """A plausible wrong answer for `answer` (the chosen one)."""
    kind = clip["kind"]
    if kind in ("digits", "words"):
        words = clip["text"].split()
        pool = DIGITS if kind == "digits" else None
        i = int(rng.integers(len(words)))
        choice = rng.random()
        if kind == "digits" and choice < 0.2 and len(words) > 1:
            new = words[:i] + words[i + 1 :]  # a dropped digit
        elif kind == "digits" and choice < 0.35:
            new = words[:i] + [str(rng.choice(DIGITS))] + words[i:]  # an inserted digit
        else:
            if pool is None:
                pool = next((g for g in (COLORS, ANIMALS, OBJECTS, VERBS) if words[i] in g), None)
                if pool is None:  # "the" / "and": change another word
                    i = next(j for j, w in enumerate(words) if any(w in g for g in (COLORS, ANIMALS, OBJECTS, VERBS)))
                    pool = next(g for g in (COLORS, ANIMALS, OBJECTS, VERBS) if words[i] in g)
            new = list(words)
            new[i] = str(rng.choice([w for w in pool if w != words[i]]))  # a wrong digit / word
        wrong = " ".join(new)
        return answer.replace(clip["text"], wrong)
    if kind == "tone":
        j = NOTE_NAMES.index(clip["note"])
        other = NOTE_NAMES[j + 1 if j == 0 or (j < len(NOTE_NAMES) - 1 and rng.random() < 0.5) else j - 1]
        return answer.replace(clip["note"], other)  # a neighbouring note
    if kind == "chirp":
        other = "down" if clip["direction"] == "up" else "up"
        return answer.replace(clip["direction"], other).replace(clip["direction"].capitalize(), other.capitalize())
    if kind == "beeps":
        c = clip["count"]
        other = c + 1 if c == 1 or (c < 5 and rng.random() < 0.5) else c - 1  # one beep too many / too few
        if answer == sound_answer(clip):
            return sound_answer({**clip, "count": other})
        return f"{COUNT_WORDS[other]}."
    return "A single beep." if rng.random() < 0.5 else "A chirp sweeping up."  # noise burst mistaken


def sft_record(rid: str, request: dict, answer: str) -> dict:
    if "messages" in request:
        return {"id": rid, "messages": request["messages"] + [{"role": "assistant", "content": answer}]}
    return {"id": rid, **request, "completion": answer}


def write_heldout_requests(clips: list[dict], out: Path) -> list[dict]:
    """heldout_requests.jsonl (generate requests) + heldout_references.jsonl: transcription of every spoken clip
    with the base and the chat prompt, "What sound is this?" and the specific question for every sound."""
    requests, refs = [], []
    for clip in clips:
        opts = dict((n, (r, a)) for n, r, a in prompt_options(clip))
        if clip["kind"] in ("digits", "words"):
            chosen = ["asr-base", "asr-chat0"]
        else:
            chosen = ["what-chat0"] + (["specific-chat"] if "specific-chat" in opts else [])
        for name in chosen:
            request, answer = opts[name]
            rid = f"{clip['id']}-{name}"
            requests.append({"id": rid, **request})
            metric = "wer" if name.startswith("asr") else "accuracy"
            refs.append(
                {
                    "id": rid,
                    "expected": answer,
                    "kind": clip["kind"],
                    "prompt": name,
                    "metric": metric,
                    "source": clip["source"],
                    "noise": clip["noise"],
                }
            )
    with open(out / "heldout_requests.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in requests)
    with open(out / "heldout_references.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in refs)

    return requests
