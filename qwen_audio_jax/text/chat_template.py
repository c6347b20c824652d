"""Chat formatting: Qwen2-Audio's Jinja chat template, and Qwen-Audio v1's `from_list_format` / chatml `make_context`.

Qwen2-Audio renders messages with a Jinja template exactly as transformers' `ProcessorMixin.apply_chat_template`
(sandboxed environment, `trim_blocks` + `lstrip_blocks`, the same globals and filters), so the rendered string is
byte-identical to `Qwen2AudioProcessor.apply_chat_template(messages, tokenize=False, add_generation_prompt=...)`.
The template is the checkpoint's own when its directory has one, else transformers 4.57.6's
`Qwen2AudioProcessor.default_chat_template` (docs/reference.md §1.7), copied verbatim below.

Qwen-Audio v1 has no Jinja template: its chat turns are tokenized piece by piece by `make_context`
(qwen_generation_utils.py, docs/reference.md §3.3), which `make_context_v1` reproduces id for id.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path

from qwen_audio_jax.errors import ConfigError, PromptError

# transformers 4.57.6 `Qwen2AudioProcessor.default_chat_template`, verbatim (one string; only the "\n" shown).
DEFAULT_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if 'audio' in content or 'audio_url' in content or message['type'] == 'audio' or content['type'] == 'audio' %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif 'text' in content %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)

V1_DEFAULT_SYSTEM = "You are a helpful assistant."


def load_chat_template(model_dir: str | Path, include_tokenizer_config: bool = False) -> str | None:
    """The chat template a checkpoint directory carries, or None (-> the default Qwen2-Audio template).

    Order: `chat_template.jinja`, `chat_template.json`, `processor_config.json`: the processor-level files that
    transformers' `Qwen2AudioProcessor.from_pretrained` reads (the .jinja wins over the .json, as there).
    `tokenizer_config.json`'s `chat_template` is read only with `include_tokenizer_config=True`: transformers'
    processor never reads it (verified on 4.57.6: it falls back to its default template), and a Qwen2 text-only
    chatml template found there would render audio parts as a Python list.
    """
    model_dir = Path(model_dir)
    if (model_dir / "chat_template.jinja").is_file():
        return (model_dir / "chat_template.jinja").read_text(encoding="utf-8")
    names = ["chat_template.json", "processor_config.json"]
    if include_tokenizer_config:
        names.append("tokenizer_config.json")
    for name in names:
        path = model_dir / name
        if not path.is_file():
            continue
        try:
            template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
        except ValueError as e:
            raise ConfigError(f"cannot parse {path}: {e}") from e
        if isinstance(template, list):  # [{"name": ..., "template": ...}]: use the one named "default"
            template = {t.get("name"): t.get("template") for t in template}.get("default")
        if isinstance(template, dict):
            template = template.get("default")
        if template:
            return template
    return None


@functools.lru_cache(maxsize=16)
def compile_chat_template(template: str):
    """Compile in the environment transformers uses (`_compile_jinja_template`)."""
    import jinja2
    from jinja2.ext import Extension
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationTag(Extension):
        # transformers' AssistantTracker: `{% generation %}...{% endgeneration %}` renders its body unchanged.
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # transformers overrides Jinja's tojson, which would HTML-escape.
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ConfigError(f"the chat template does not parse (line {e.lineno}: {e.message})") from e


def render_chat(
    messages: Sequence[dict],
    template: str | None = None,
    *,
    add_generation_prompt: bool = True,
    special_tokens: dict | None = None,
    **template_kwargs,
) -> str:
    """Render one conversation to text (placeholders `<|audio_bos|><|AUDIO|><|audio_eos|>` not yet expanded).

    Args:
      messages: chat turns `{"role": ..., "content": str | [{"type": "text", "text": ...},
        {"type": "audio", "audio": path_or_array}, ...]}`.
      template: Jinja source; None -> `DEFAULT_CHAT_TEMPLATE`.
      special_tokens: the tokenizer's `special_tokens_map` (transformers passes it as template variables).
      template_kwargs: extra template variables.
    """
    import jinja2

    _check_messages(messages)
    compiled = compile_chat_template(template or DEFAULT_CHAT_TEMPLATE)
    try:
        return compiled.render(
            messages=list(messages),
            tools=None,
            documents=None,
            add_generation_prompt=add_generation_prompt,
            **template_kwargs,
            **(special_tokens or {}),
        )
    except jinja2.TemplateError as e:
        raise PromptError(f"the chat template cannot render these messages: {e}") from e


ROLES = ("system", "user", "assistant")
PART_TYPES = ("text", "audio", "audio_url")


def _check_messages(messages) -> None:
    """Refuses what the templates would silently mis-render: unknown roles, non-audio media, unknown parts."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise PromptError("messages must be a non-empty list of {'role': ..., 'content': ...} turns")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise PromptError(f"message {i} must be a dict with 'role' and 'content', got {m!r:.80}")
        if m["role"] not in ROLES:
            raise PromptError(f"message {i} has role {m['role']!r}; use one of {', '.join(ROLES)}.")
        if not isinstance(m["content"], (str, list, tuple)):
            raise PromptError(f"message {i}: content must be a string or a list of parts, got {type(m['content'])}")
        if isinstance(m["content"], str):
            continue
        for part in m["content"]:
            if not isinstance(part, dict):
                raise PromptError(
                    f'message {i}: a content part must be a dict such as {{"type": "text", '
                    f'"text": ...}}, got {part!r:.60}'
                )
            kind = part.get("type", "audio" if ("audio" in part or "audio_url" in part) else "text")
            if kind not in PART_TYPES:
                raise PromptError(
                    f"message {i}: content of type {kind!r} is not supported (an audio-language "
                    f"model takes {', '.join(PART_TYPES)})."
                )
            if kind == "text" and not isinstance(part.get("text"), str):
                raise PromptError(f'message {i}: a text part needs a string "text", got {part!r:.60}')


def is_audio_part(message: dict, part) -> bool:
    """The default template's test for an audio part (a part it renders as `Audio k: <|audio_bos|>...`)."""
    if isinstance(part, str):  # Jinja's `'audio' in content` is a substring test on strings
        return "audio" in part
    return "audio" in part or "audio_url" in part or message.get("type") == "audio" or part.get("type") == "audio"


def audio_parts(messages: Sequence[dict]) -> list:
    """The audio inputs of a conversation in the order the template numbers them (`audio`, `audio_url`, `url`
    or `path` key of each audio part)."""
    _check_messages(messages)
    out = []
    for i, m in enumerate(messages):
        if isinstance(m["content"], str):
            continue
        for part in m["content"]:
            if not is_audio_part(m, part):
                continue
            src = next(
                (
                    part[k]
                    for k in ("audio", "audio_url", "url", "path")
                    if isinstance(part, dict) and part.get(k) is not None
                ),
                None,
            )
            if src is None:
                raise PromptError(f"message {i}: audio part {part!r:.80} has no 'audio' (path or array) value")
            out.append(src)
    return out


# --------------------------------------------------------------------------------------------------------------
# Qwen-Audio v1
# --------------------------------------------------------------------------------------------------------------


def v1_from_list_format(items: Sequence[dict]) -> str:
    """Qwen-Audio's `tokenizer.from_list_format`: `[{'audio': p}, {'text': t}]` -> "Audio 1:<audio>p</audio>\\n" + t.

    Note: no space after the colon (Qwen2-Audio's template writes "Audio 1: ").
    """
    text, n = "", 0
    for item in items:
        if "audio" in item:
            n += 1
            text += f"Audio {n}:<audio>{item['audio']}</audio>\n"
        elif "text" in item:
            text += item["text"]
        else:
            raise PromptError(f"unsupported Qwen-Audio list-format element {item!r:.80} (use 'audio' or 'text')")
    return text


def v1_extract_audio_paths(text: str) -> list[str]:
    """Qwen-Audio's `extract_audio_urls`: the text of each `<audio>...</audio>` span (not across newlines)."""
    return re.findall(r"<audio>(.*?)</audio>", text)


def make_context_v1(
    tokenizer,
    query: str,
    history: Sequence[tuple[str, str | None]] = (),
    system: str = V1_DEFAULT_SYSTEM,
    max_window_size: int = 6144,
    encode: Callable[[str], list[int]] | None = None,
) -> tuple[str, list[int]]:
    """Qwen-Audio's chatml `make_context` (qwen_generation_utils.py): returns (raw_text, token ids).

    Roles and contents are tokenized separately (so no BPE merge crosses a turn boundary) with only the audio tags
    allowed as special tokens: a literal `<|im_start|>` inside a message is plain text, as in the reference.
    History turns are kept newest first while the total stays under `max_window_size` tokens.

    Args:
      tokenizer: a `QwenAudioV1Tokenizer`.
      query: the last user message (already in list-format text, e.g. "Audio 1:<audio>a.wav</audio>\\nWhat?").
      history: earlier (user, assistant) turns; an assistant of None leaves that turn open.
      encode: text -> ids for role and content strings. The processor passes one that also expands each
        `<audio>...</audio>` span to its audio tokens (the reference does this inside `tokenize`).
    """
    if encode is None:
        encode = functools.partial(tokenizer.encode, allowed_special=tokenizer.audio_special_tokens)
    im_start, im_end, nl = [tokenizer.im_start_id], [tokenizer.im_end_id], tokenizer.encode("\n")

    def turn(role: str, content: str) -> tuple[str, list[int]]:
        return f"{role}\n{content}", encode(role) + nl + encode(content)

    system_text, system_part = turn("system", system)
    system_tokens = im_start + system_part + im_end
    raw_text, context = "", []
    for q, a in reversed(list(history)):
        if _cannot_fit(tokenizer, q, a, max_window_size):
            break  # as the reference would, after tokenizing a turn that may be megabytes (a lower bound says so)
        q_text, q_part = turn("user", q)
        q_tokens = im_start + q_part + im_end
        if a is not None:
            a_text, a_part = turn("assistant", a)
            nxt = nl + q_tokens + nl + im_start + a_part + im_end
            prev = f"\n<|im_start|>{q_text}<|im_end|>\n<|im_start|>{a_text}<|im_end|>"
        else:
            nxt = nl + q_tokens + nl
            prev = f"\n<|im_start|>{q_text}<|im_end|>\n"
        if len(system_tokens) + len(nxt) + len(context) < max_window_size:
            context, raw_text = nxt + context, prev + raw_text
        else:
            break
    context = system_tokens + context
    raw_text = f"<|im_start|>{system_text}<|im_end|>" + raw_text
    context += nl + im_start + turn("user", query)[1] + im_end + nl + im_start + tokenizer.encode("assistant") + nl
    raw_text += f"\n<|im_start|>user\n{query}<|im_end|>\n<|im_start|>assistant\n"
    return raw_text, context


def _cannot_fit(tokenizer, query: str, answer: str | None, window: int) -> bool:
    """True when a history turn's texts alone certainly take `window` tokens or more (`Tokenizer.min_tokens`; its
    `<audio>...</audio>` spans become audio tokens, so they are not measured): make_context would drop it and every
    older turn, so it need not be tokenized first. Computes nothing for turns under a quarter of the window."""
    texts = [t for t in (query, answer) if isinstance(t, str)]
    if 4 * sum(map(len, texts)) < window:
        return False
    texts = [re.sub(r"<audio>.*?</audio>", "", t) if "<audio>" in t else t for t in texts]
    return tokenizer.min_tokens(texts) >= window


def v1_messages_to_context_args(messages: Sequence[dict]) -> tuple[str, list[tuple[str, str]], str, dict]:
    """Chat messages -> (system, history, query, {span label: audio source}) for `make_context_v1`.

    A leading system message sets the system prompt; the rest must alternate user/assistant and end with user.
    List contents are joined with `v1_from_list_format`, numbering audio per message as the reference does; an
    array (not a path) is written into its span under a stand-in label that maps back to it.
    """
    _check_messages(messages)
    sources: dict = {}

    def content_text(m: dict) -> str:
        if isinstance(m["content"], str):
            return m["content"]
        items = []
        for part in m["content"]:
            if is_audio_part(m, part):
                src = audio_parts([{"role": m["role"], "content": [part]}])[0]
                label = src if isinstance(src, str) else f"audio-array-{len(sources)}"
                sources[str(label)] = src
                items.append({"audio": str(label)})
            elif isinstance(part, dict) and "text" in part:
                items.append({"text": part["text"]})
        return v1_from_list_format(items)

    msgs = list(messages)
    system = V1_DEFAULT_SYSTEM
    if msgs[0]["role"] == "system":
        system = content_text(msgs.pop(0))
    roles = [m["role"] for m in msgs]
    if (
        not msgs
        or roles[-1] != "user"
        or any(r != ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(roles))
    ):
        raise PromptError(f"Qwen-Audio chat needs turns alternating user/assistant and ending with user, got {roles}")
    texts = [content_text(m) for m in msgs]
    history = [(texts[i], texts[i + 1]) for i in range(0, len(texts) - 1, 2)]
    return system, history, texts[-1], sources
