"""Record forms of preference / SFT data files -> (request, chosen, rejected): ours, TRL's conversational
forms, LLaMA-Factory's sharegpt `ranking` form, and SFT conversations (see training/data.py for the list)."""

from __future__ import annotations

from pathlib import Path

from qwen_audio_jax.errors import DataError

LF_AUDIO = "<audio>"  # LLaMA-Factory's audio placeholder in sharegpt "value" strings
# LLaMA-Factory sharegpt role tags -> chat roles. Tool turns have no place in the Qwen2-Audio template.
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
_TOOL_ROLES = ("observation", "function", "function_call", "tool")


# -- record forms -----------------------------------------------------------------------------------------------------


def parse_record(rec, base_dir: Path, preference: bool) -> tuple[dict, str, str | None]:
    """One record of any form -> (prompt request, chosen, rejected or None). Raises DataError naming the field."""
    if not isinstance(rec, dict):
        raise DataError(f"a record must be a JSON object, got {type(rec).__name__}")
    if "conversations" in rec or "audios" in rec:
        return _parse_sharegpt(rec, base_dir, preference)
    prompt = rec.get("prompt")
    if "messages" in rec:
        if "audio" in rec:
            raise DataError(
                "a top-level 'audio' list goes with 'prompt' only; put each clip inside 'messages' as "
                "{'type': 'audio', 'audio': path}"
            )
        messages = _messages(rec["messages"], base_dir, "messages")
        if not preference and "chosen" not in rec and "completion" not in rec:
            return _split_last_turn(messages, "messages")
        request = {"messages": messages}
    elif isinstance(prompt, str):  # ours (and TRL's standard form when there is no audio)
        request = {"prompt": prompt}
        if rec.get("audio") is not None:
            request["audio"] = [_resolve(a, base_dir) for a in _path_list(rec["audio"], "audio")]
    elif isinstance(prompt, list):  # TRL conversational
        request = {"messages": _messages(prompt, base_dir, "prompt")}
    elif prompt is None and isinstance(rec.get("chosen"), list):
        return _parse_implicit(rec, base_dir, preference)
    else:
        raise DataError(
            f"unknown record form (keys {sorted(rec)}); give 'messages' or 'prompt' with 'chosen' and "
            "'rejected', TRL's prompt/chosen/rejected turns, or LLaMA-Factory's 'conversations'"
        )
    return (request, *_targets(rec, preference))


def _targets(rec: dict, preference: bool) -> tuple[str, str | None]:
    if "completion" in rec and "chosen" in rec:
        raise DataError("the record has both 'completion' and 'chosen'; give one")
    key = "completion" if not preference and "chosen" not in rec else "chosen"
    if key not in rec:
        raise DataError(
            f"missing '{key}'" + ("; a preference record needs 'chosen' and 'rejected'" if preference else "")
        )
    chosen = _completion(rec[key], key)
    if not preference:
        return chosen, None
    if "rejected" not in rec:
        raise DataError(
            "missing 'rejected'; a preference record needs both 'chosen' and 'rejected' "
            "(SFT data trains with `qwen-audio-jax sft`)"
        )
    return _pair(chosen, _completion(rec["rejected"], "rejected"))


def _pair(chosen: str, rejected: str) -> tuple[str, str]:
    if chosen == rejected:  # DPO's gradient is exactly zero on such a pair: it is a data bug, not a preference
        raise DataError("'chosen' and 'rejected' are identical; a preference pair needs two different completions")
    return chosen, rejected


def _parse_implicit(rec: dict, base_dir: Path, preference: bool) -> tuple[dict, str, str | None]:
    """TRL's implicit prompt: whole conversations; the prompt is every turn but the last, which must be shared."""
    chosen = _messages(rec["chosen"], base_dir, "chosen")
    if not preference and rec.get("rejected") is None:
        return _split_last_turn(chosen, "chosen")
    rejected = _messages(rec.get("rejected"), base_dir, "rejected")
    if len(chosen) < 2 or chosen[:-1] != rejected[:-1]:
        raise DataError(
            "'chosen' and 'rejected' (whole conversations, no 'prompt') must share every turn but the "
            "last, which is the assistant's answer; or give the shared turns as 'prompt'"
        )
    request, text, _ = _split_last_turn(chosen, "chosen")
    return (request, text, None) if not preference else (request, *_pair(text, _completion(rejected[-1], "rejected")))


def _split_last_turn(messages: list[dict], what: str) -> tuple[dict, str, None]:
    """A conversation ending with the assistant turn to learn -> (prompt request, target text, None)."""
    if len(messages) < 2 or messages[-1]["role"] != "assistant":
        raise DataError(f"'{what}' must end with the assistant turn to learn, after at least one prompt turn")
    return {"messages": messages[:-1]}, _completion(messages[-1], f"{what}[-1]"), None


def _parse_sharegpt(rec: dict, base_dir: Path, preference: bool) -> tuple[dict, str, str | None]:
    """LLaMA-Factory sharegpt (`ranking` for preferences): from/value turns, `<audio>` placeholders + "audios"."""
    turns = rec.get("conversations", rec.get("messages"))
    if not isinstance(turns, list) or not turns:
        raise DataError("'conversations' must be a non-empty list of {'from': ..., 'value': ...} turns")
    audios = [_resolve(a, base_dir) for a in _path_list(rec.get("audios") or [], "audios")]
    turns = [_sharegpt_turn(t, f"conversations[{i}]") for i, t in enumerate(turns)]
    n = sum(text.count(LF_AUDIO) for _, text in turns)
    if n != len(audios):
        raise DataError(
            f"the conversation has {n} {LF_AUDIO} placeholders but 'audios' lists {len(audios)} files; "
            "give one file per placeholder"
        )
    messages, pending = [], iter(audios)
    for i, (role, text) in enumerate(turns):
        if LF_AUDIO not in text:
            messages.append({"role": role, "content": text})
            continue
        if role != "user":
            raise DataError(f"conversations[{i}] ({role}) has an {LF_AUDIO} placeholder; audio goes in human turns")
        content = []
        for k, piece in enumerate(text.split(LF_AUDIO)):
            if k:  # the k-th placeholder sits before this piece
                content.append({"type": "audio", "audio": next(pending)})
            if piece.strip():  # text kept verbatim; only the empty/blank gaps around placeholders are dropped
                content.append({"type": "text", "text": piece})
        messages.append({"role": role, "content": content})
    if isinstance(rec.get("system"), str) and rec["system"] and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": rec["system"]})
    if "chosen" in rec or preference:
        return ({"messages": messages}, *_targets(rec, preference))
    return _split_last_turn(messages, "conversations")


def _sharegpt_turn(turn, where: str) -> tuple[str, str]:
    if not isinstance(turn, dict):
        raise DataError(f"{where} must be an object with 'from' and 'value'")
    role, text = turn.get("from", turn.get("role")), turn.get("value", turn.get("content"))
    role = role if isinstance(role, str) else repr(role)
    if role in _TOOL_ROLES:
        raise DataError(
            f"{where} is a tool turn (from {role!r}), which audio training data does not support; "
            "drop the tool calls from this record"
        )
    if role not in _ROLES:
        raise DataError(f"{where} has unknown role {role!r}; use human/user, gpt/assistant or system")
    if not isinstance(text, str):
        raise DataError(f"{where}: 'value' must be a string, got {type(text).__name__}")
    return _ROLES[role], text


def _messages(value, base_dir: Path, what: str) -> list[dict]:
    """Chat turns with every audio part normalized to {"type": "audio", "audio": absolute path}."""
    if not isinstance(value, list) or not value:
        raise DataError(f"'{what}' must be a non-empty list of {{'role': ..., 'content': ...}} turns")
    out = []
    for i, m in enumerate(value):
        where = f"{what}[{i}]"
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where} must be an object with 'role' and 'content'")
        content = m["content"]
        if isinstance(content, list):
            content = [_part(p, base_dir, where) for p in content]
        elif not isinstance(content, str):
            raise DataError(f"{where}: 'content' must be a string or a list of parts, got {type(content).__name__}")
        out.append({**m, "content": content})
    return out


def _part(p, base_dir: Path, where: str) -> dict:
    if isinstance(p, str):
        return {"type": "text", "text": p}
    if isinstance(p, dict) and (p.get("type") == "audio" or "audio" in p or "audio_url" in p):
        src = next((p[k] for k in ("audio", "audio_url", "url", "path") if p.get(k) is not None), None)
        if not isinstance(src, str):
            raise DataError(f"{where}: an audio part needs a file path in 'audio', got {p!r:.80}")
        return {"type": "audio", "audio": _resolve(src, base_dir)}
    if isinstance(p, dict) and p.get("type", "text") == "text" and isinstance(p.get("text"), str):
        return {"type": "text", "text": p["text"]}
    raise DataError(
        f"{where}: unsupported content part {p!r:.80}; use {{'type': 'text', 'text': ...}} or "
        "{'type': 'audio', 'audio': path}"
    )


def _completion(value, what: str) -> str:
    """A completion: a string, an assistant turn (role/content or from/value), or a list holding one such turn."""
    if isinstance(value, list):
        if len(value) != 1:
            raise DataError(f"'{what}' must hold exactly one assistant turn, got {len(value)}")
        value = value[0]
    if isinstance(value, dict):
        role = value.get("role", value.get("from"))
        if not isinstance(role, str) or _ROLES.get(role) != "assistant":
            raise DataError(f"'{what}' must be an assistant turn, got role {role!r}")
        value = value.get("content", value.get("value"))
        if isinstance(value, list):
            value = "".join(_text_of(p, what) for p in value)
    if not isinstance(value, str):
        raise DataError(f"'{what}' must be a string (or an assistant turn), got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"'{what}' is empty; give the completion text")
    return value


def _text_of(part, what: str) -> str:
    if isinstance(part, dict) and (part.get("type") == "audio" or "audio" in part):
        raise DataError(f"'{what}' contains audio; a completion is text only")
    text = part if isinstance(part, str) else part.get("text") if isinstance(part, dict) else None
    if not isinstance(text, str):
        raise DataError(f"'{what}' has a content part that is not text: {part!r:.80}")
    return text


def _path_list(value, what: str) -> list[str]:
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not all(isinstance(a, str) and a for a in value):
        raise DataError(f"'{what}' must be a list of audio file paths")
    return value


def _resolve(src: str, base_dir: Path) -> str:
    if "://" in src:  # a URL: left as is (the audio loader will say it cannot read it)
        return src
    p = Path(src).expanduser()
    return str(p if p.is_absolute() else base_dir / p)
