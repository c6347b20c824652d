"""Requests -> model inputs: chat rendering, `<|AUDIO|>` expansion, log-mel features, batch collation.

One request at a time (`prepare_*` -> `PreparedRequest`), so a bad request fails alone with a typed error
(`prepare_many` returns the error in its slot); batches are assembled afterwards (`collate` -> `ModelInputs`, both
in text/batch.py), which is also where prompt-length buckets plug in (`pad_to_length`).

Qwen2-Audio (docs/reference.md §1.6): each `<|AUDIO|>` placeholder becomes N = ((L-1)//2+1-2)//2+1 copies of itself, L
the
clip's mel length (ceil(samples/160), at most 3000), exactly as transformers 4.57.6 `Qwen2AudioProcessor.__call__`
expands it, including its wrapping of a bare `<|AUDIO|>` in `<|audio_bos|>`/`<|audio_eos|>`.
Qwen-Audio v1 (docs/reference.md §3.3): each `<audio>path</audio>` span becomes `<audio>` + N x 151851 + `</audio>` with
L = floor(samples/160) and 80 mel bins; chat turns go through `make_context_v1`.
Long audio: "truncate" keeps the first 30 s (the reference); "chunk" turns one input into k clips of <= 30 s, each
its own bos/eos-delimited span in place of the single placeholder.

Bounded work: a request is checked against its token budget (`max_tokens`: the call's, else the processor's, the
model's context) before anything costly. Its texts are measured in bytes, a lower bound on their tokens
(`Tokenizer.min_tokens`), before any audio is loaded, any chat is rendered or anything is tokenized; a file is
decoded only as far as the long-audio policy keeps (audio/clips.py). So a 100 MB prompt or a 10-hour file costs
about its own size, never the gigabytes its tokens or samples would, and is refused as that request's error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qwen_audio_jax.audio.clips import Silence, file_clips, policy_clips
from qwen_audio_jax.audio.features import log_mel_numpy, mel_length
from qwen_audio_jax.audio.lengths import num_audio_tokens
from qwen_audio_jax.audio.load import SAMPLE_RATE, as_waveform
from qwen_audio_jax.choices import DEFAULT_LONG_AUDIO, LONG_AUDIO_POLICIES, QWEN_AUDIO_V1, VARIANTS
from qwen_audio_jax.errors import ConfigError, PromptError, QwenAudioError
from qwen_audio_jax.text.batch import ModelInputs, PreparedRequest, collate  # re-exported: callers import them here
from qwen_audio_jax.text.budget import TooLongError, check_text_budget
from qwen_audio_jax.text.chat_template import (
    audio_parts,
    load_chat_template,
    make_context_v1,
    render_chat,
    v1_extract_audio_paths,
    v1_messages_to_context_args,
)
from qwen_audio_jax.text.prompt_generation import check_prompt_generation, message_texts
from qwen_audio_jax.text.tokenizer import AUDIO_BOS, AUDIO_EOS, AUDIO_TOKEN, Tokenizer, load_tokenizer


class Processor:
    """Turns prompts or chat messages (+ audio) into `PreparedRequest`s and batches.

    Args:
      tokenizer: a `Qwen2AudioTokenizer` or `QwenAudioV1Tokenizer`.
      chat_template: Jinja source for Qwen2-Audio messages; None -> transformers' default Qwen2-Audio template.
      n_mels: mel bins; None -> 128 (Qwen2-Audio) / 80 (v1).
      length_rule: mel length of a clip, "ceil" (Qwen2-Audio, HF) or "floor" (v1); None -> the variant's.
      long_audio: "truncate" (reference) or "chunk" (see module docstring).
      variant: QWEN2_AUDIO or QWEN_AUDIO_V1 (choices.VARIANTS); None -> the tokenizer's.
      max_tokens: the token budget of a request when a call gives none (the model's context); None: unbounded.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        chat_template: str | None = None,
        n_mels: int | None = None,
        length_rule: str | None = None,
        long_audio: str = DEFAULT_LONG_AUDIO,
        variant: str | None = None,
        chat_format: str | None = None,
        max_tokens: int | None = None,
    ):
        variant = variant or tokenizer.variant
        if variant not in VARIANTS:
            raise ConfigError(f"unknown model variant {variant!r}; use one of {', '.join(VARIANTS)}")
        if variant != tokenizer.variant:
            raise ConfigError(
                f"variant {variant!r} needs a {variant} tokenizer, got a {tokenizer.variant} one ({tokenizer.source})"
            )
        v1 = variant == QWEN_AUDIO_V1
        self.tokenizer, self.variant, self.chat_template = tokenizer, variant, chat_template
        self.n_mels = int(n_mels or (80 if v1 else 128))
        self.length_rule = length_rule or ("floor" if v1 else "ceil")
        if self.length_rule not in ("ceil", "floor"):
            raise ConfigError(f"length_rule must be 'ceil' or 'floor', got {self.length_rule!r}")
        if long_audio not in LONG_AUDIO_POLICIES:
            raise ConfigError(f"long_audio must be one of {', '.join(LONG_AUDIO_POLICIES)}, got {long_audio!r}")
        self.long_audio = long_audio
        self.max_tokens = max_tokens
        self.chat_format = chat_format  # v1's generation_config.json "chat_format": "chatml" (Chat) or "raw"
        # Resolve the audio ids now, so a tokenizer without them fails here rather than per request.
        self.audio_token_id, self.audio_bos_id, self.audio_eos_id = (
            tokenizer.audio_token_id,
            tokenizer.audio_bos_id,
            tokenizer.audio_eos_id,
        )

    @property
    def is_chat(self) -> bool:
        """A chat checkpoint: Qwen2-Audio with its own chat template (Instruct), Qwen-Audio-Chat (chatml). Task
        presets then use chat turns; base models get their raw prompt forms."""
        if self.variant == QWEN_AUDIO_V1:
            return self.chat_format == "chatml"
        return self.chat_template is not None

    @classmethod
    def from_model_dir(cls, model_dir: str | Path, **overrides) -> Processor:
        """Tokenizer, chat template and mel bins (preprocessor_config.json `feature_size`) of a checkpoint dir."""
        import json

        model_dir = Path(model_dir)
        tokenizer = load_tokenizer(model_dir)
        kwargs = {"chat_template": load_chat_template(model_dir)}
        for name, key, option in (
            ("preprocessor_config.json", "feature_size", "n_mels"),
            ("generation_config.json", "chat_format", "chat_format"),
        ):
            path = model_dir / name
            if path.is_file():
                try:
                    kwargs[option] = json.loads(path.read_text(encoding="utf-8")).get(key)
                except ValueError as e:
                    raise ConfigError(f"cannot parse {path}: {e}") from e
        kwargs.update(overrides)
        return cls(tokenizer, **kwargs)

    # -- audio -------------------------------------------------------------------------------------------------------

    def _clips(self, src, what: str, max_tokens: int | None = None) -> list[tuple[np.ndarray, int]]:
        """One audio input (path, 16 kHz array, (array, rate), {"array", "sampling_rate"} or a `Silence` stand-in)
        -> [(mel, L)] per clip; a file is decoded only as far as the long-audio policy keeps, within `max_tokens`."""
        policy = self.long_audio
        if isinstance(src, (str, os.PathLike)):  # files load as the variant's reference loads them
            clips = file_clips(src, policy, v1=self.variant == QWEN_AUDIO_V1, max_tokens=max_tokens)
        elif isinstance(src, Silence):
            clips = policy_clips(src, policy, src.source or what, max_tokens=max_tokens)
        elif isinstance(src, np.ndarray):
            clips = policy_clips(as_waveform(src, SAMPLE_RATE, source=what), policy, what, max_tokens=max_tokens)
        elif isinstance(src, tuple) and len(src) == 2:
            wav = as_waveform(np.asarray(src[0]), src[1], source=what)
            clips = policy_clips(wav, policy, what, max_tokens=max_tokens)
        elif isinstance(src, dict) and "array" in src:
            wav = as_waveform(np.asarray(src["array"]), src.get("sampling_rate", SAMPLE_RATE), source=what)
            clips = policy_clips(wav, policy, what, max_tokens=max_tokens)
        else:
            raise PromptError(f"{what}: an audio input must be a file path or a waveform array, got {type(src)}")
        out = []
        for clip in clips:
            mel = np.asarray(log_mel_numpy(clip, n_mels=self.n_mels), np.float32)
            out.append((mel, int(mel_length(len(clip), rule=self.length_rule))))
        return out

    def _audio_clips(self, sources: list, budget: int | None) -> list[list[tuple[np.ndarray, int]]]:
        """Each audio input's clips, in order, loading no more than the budget can hold: each clip's tokens (its
        audio tokens and the two around them) are counted as it comes, what is left bounds the next input, and a
        request of many long files stops at the first one past the budget (TooLongError)."""
        out, spent = [], 0
        for i, src in enumerate(sources):
            clips = self._clips(src, f"audio {i}", None if budget is None else budget - spent)
            spent += sum(num_audio_tokens(L) + 2 for _, L in clips)
            if budget is not None and spent > budget:
                raise TooLongError(
                    f"the audio takes more than the {budget:,} tokens this request can hold ({spent:,} by audio {i}); "
                    "give fewer or shorter clips."
                )
            out.append(clips)
        return out

    # -- requests ----------------------------------------------------------------------------------------------------

    def prepare_prompt(
        self, prompt: str, audio: Sequence | None = None, completion: str | None = None, *, max_tokens=None
    ) -> PreparedRequest:
        """Raw text with placeholders: `<|audio_bos|><|AUDIO|><|audio_eos|>` (Qwen2-Audio, one per entry of
        `audio`) or `<audio>path</audio>` (v1; `audio`, if given, replaces the span paths in order).
        `max_tokens`: this request's token budget (default: the processor's), checked before anything costly."""
        if not isinstance(prompt, str):
            raise PromptError(f"a prompt must be a string, got {type(prompt)}")
        check_prompt_generation(prompt, self.tokenizer, self.variant == QWEN_AUDIO_V1)
        budget = self._check_budget([prompt], [completion], max_tokens)
        if self.variant == QWEN_AUDIO_V1:
            return self._prepare_v1_prompt(prompt, audio, completion, budget)
        return self._prepare_v2_text(prompt, list(audio or []), completion, budget)

    def prepare_messages(
        self,
        messages: Sequence[dict],
        completion: str | None = None,
        add_generation_prompt: bool = True,
        *,
        max_tokens=None,
    ) -> PreparedRequest:
        """Chat turns; audio parts `{"type": "audio", "audio": path_or_array}` (or `audio_url`/`url`/`path`).
        `max_tokens` as for `prepare_prompt` (the texts are measured before the chat is rendered)."""
        check_prompt_generation(message_texts(messages), self.tokenizer, self.variant == QWEN_AUDIO_V1)
        budget = self._check_budget(self._kept_texts(messages), [completion], max_tokens)
        if self.variant == QWEN_AUDIO_V1:
            return self._prepare_v1_messages(messages, completion, budget)
        text = render_chat(
            messages,
            self.chat_template,
            add_generation_prompt=add_generation_prompt,
            special_tokens=getattr(self.tokenizer, "special_tokens_map", None),
        )
        return self._prepare_v2_text(text, audio_parts(messages), completion, budget)

    def prepare(self, request: dict, *, max_tokens: int | None = None) -> PreparedRequest:
        """A request record: {"messages": [...]} or {"prompt": str, "audio": [...]}, optional "completion";
        `max_tokens` as for `prepare_prompt`."""
        if not isinstance(request, dict):
            raise PromptError(f"a request must be a dict with 'messages' or 'prompt', got {type(request)}")
        completion = request.get("completion")
        if "messages" in request:
            return self.prepare_messages(request["messages"], completion=completion, max_tokens=max_tokens)
        if "prompt" in request:
            return self.prepare_prompt(request["prompt"], request.get("audio"), completion, max_tokens=max_tokens)
        raise PromptError(f"a request needs 'messages' or 'prompt', got keys {sorted(request)}")

    def prepare_completions(
        self, request: dict, completions: Sequence[str], *, max_tokens: int | None = None
    ) -> list[PreparedRequest]:
        """The prompt of `request` prepared once (its audio loaded and featurized once), then one PreparedRequest per
        completion, with the token ids of `prepare({**request, "completion": c})`. All results share the prompt's
        `mels` and `mel_lengths` list objects (DPO's chosen and rejected condition on the same clips): treat them
        as read-only. `max_tokens`: the budget of prompt + completion (checked for each before anything costly)."""
        if isinstance(request, dict) and "completion" in request:
            raise PromptError(
                "prepare_completions takes the completions as its second argument; remove 'completion' from the request"
            )
        budget = self.max_tokens if max_tokens is None else max_tokens
        if isinstance(request, dict) and isinstance(request.get("prompt"), str):
            self._check_budget([request["prompt"]], list(completions), budget)
        elif isinstance(request, dict) and "messages" in request:
            self._check_budget(self._kept_texts(request["messages"]), list(completions), budget)
        base = self.prepare(request, max_tokens=budget)
        return [self._finish(base.token_ids, base.mels, base.mel_lengths, c, base.prompt_text) for c in completions]

    def _check_budget(self, prompt_texts: list, completions: list, max_tokens: int | None) -> int | None:
        """Refuses texts that cannot fit the budget (the call's, else the processor's), before anything costly
        (text/budget.py); returns the budget. Audio markup is not measured: it becomes a clip's tokens, not its own."""
        budget = self.max_tokens if max_tokens is None else max_tokens
        if budget is not None:
            texts = [self._without_audio_markup(t) for t in prompt_texts if isinstance(t, str)]
            check_text_budget(self.tokenizer, texts, [c for c in completions if c is not None], budget)
        return budget

    def _kept_texts(self, messages) -> list[str]:
        """The texts of chat turns that the prompt always holds: all of them for Qwen2-Audio; for v1 the system
        prompt and the last query (its make_context drops history turns that do not fit its window)."""
        if self.variant != QWEN_AUDIO_V1:
            return message_texts(messages)
        system, _, query, _ = v1_messages_to_context_args(messages)
        return [system, query]

    def _without_audio_markup(self, text: str) -> str:
        """`text` without its audio placeholders (`<|AUDIO|>`; v1's `<audio>PATH</audio>` spans), which become a
        clip's audio tokens (possibly none), not tokens of their own. Copies only text that has them."""
        if self.variant == QWEN_AUDIO_V1:
            return re.sub(r"<audio>.*?</audio>", "", text) if "<audio>" in text else text
        return text.replace(AUDIO_TOKEN, "") if AUDIO_TOKEN in text else text

    def prepare_many(self, requests: Sequence[dict]) -> list[PreparedRequest | QwenAudioError]:
        """`prepare` each request; a request that fails yields its typed error in its slot, not an exception."""
        out: list[PreparedRequest | QwenAudioError] = []
        for r in requests:
            try:
                out.append(self.prepare(r))
            except QwenAudioError as e:
                out.append(e)
        return out

    def collate(
        self, prepared: Sequence[PreparedRequest], padding_side: str = "left", pad_to_length: int | None = None
    ) -> ModelInputs:
        return collate(prepared, pad_id=self.tokenizer.pad_id, padding_side=padding_side, pad_to_length=pad_to_length)

    def __call__(
        self, batch, audio: Sequence | None = None, *, padding_side: str = "left", pad_to_length: int | None = None
    ) -> ModelInputs:
        """Prepare + collate. `batch`: a prompt, a conversation, or a list of prompts / conversations / request
        dicts. `audio` (prompts only): one flat list consumed in placeholder order, as transformers takes it."""
        if isinstance(batch, str) or (
            isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], dict) and "role" in batch[0]
        ):
            batch = [batch]
        pending = list(audio or [])
        prepared = []
        for item in batch:
            if isinstance(item, str):
                k = self._count_placeholders(item)
                if k > len(pending):
                    raise PromptError(
                        f"the prompts have more audio placeholders than the {len(audio or [])} audio inputs given"
                    )
                prepared.append(self.prepare_prompt(item, pending[:k] if audio is not None else None))
                pending = pending[k:]
            elif isinstance(item, dict):
                prepared.append(self.prepare(item))
            else:
                prepared.append(self.prepare_messages(item))
        if pending:
            raise PromptError(
                f"{len(pending)} audio inputs left over: the prompts have fewer audio placeholders "
                f"than the {len(audio)} audio inputs given"
            )
        return self.collate(prepared, padding_side=padding_side, pad_to_length=pad_to_length)

    def _count_placeholders(self, text: str) -> int:
        return len(v1_extract_audio_paths(text)) if self.variant == QWEN_AUDIO_V1 else text.count(AUDIO_TOKEN)

    # -- Qwen2-Audio -------------------------------------------------------------------------------------------------

    def _prepare_v2_text(self, text: str, sources: list, completion: str | None, budget=None) -> PreparedRequest:
        parts = text.split(AUDIO_TOKEN)
        if len(parts) - 1 != len(sources):
            raise PromptError(
                f"the prompt has {len(parts) - 1} {AUDIO_TOKEN} placeholders but {len(sources)} "
                "audio inputs were given; pass one audio per placeholder"
            )
        expanded, mels, lengths = [parts[0]], [], []
        for i, clips in enumerate(self._audio_clips(sources, budget)):
            # Chunks of one input are separate clips: close and reopen the span between them.
            span = (AUDIO_EOS + AUDIO_BOS).join(AUDIO_TOKEN * num_audio_tokens(L) for _, L in clips)
            # transformers v4: wrap when the placeholder has neither <|audio_bos|> before nor <|audio_eos|> after
            # (it tests the neighbouring text with string slices; this is the same test).
            if not parts[i].endswith(AUDIO_BOS) and not parts[i + 1].startswith(AUDIO_EOS):
                span = AUDIO_BOS + span + AUDIO_EOS
            expanded += [span, parts[i + 1]]
            mels += [m for m, _ in clips]
            lengths += [L for _, L in clips]
        ids = self.tokenizer.encode("".join(expanded))
        return self._finish(ids, mels, lengths, completion, text)

    def _finish(self, ids: list[int], mels, lengths, completion: str | None, text: str) -> PreparedRequest:
        req = PreparedRequest(token_ids=list(ids), mels=mels, mel_lengths=lengths, prompt_text=text)
        if completion is not None:
            if not isinstance(completion, str):
                raise PromptError(f"a completion must be a string, got {type(completion)}")
            # Tokenized on its own (not jointly with the prompt), so the prompt ids are exactly the ones the model
            # conditions on at generation time and no BPE merge straddles the boundary.
            comp = self.tokenizer.encode(completion)
            if any(t in (self.audio_token_id, self.audio_bos_id, self.audio_eos_id) for t in comp):
                raise PromptError("a completion cannot contain audio tokens; put audio in the prompt")
            req.num_prompt_tokens = len(req.token_ids)
            req.completion_mask = [0] * len(req.token_ids) + [1] * len(comp)
            req.token_ids += comp
        return req

    # -- Qwen-Audio v1 -----------------------------------------------------------------------------------------------

    def _expand_v1_spans(self, ids: list[int], clip_lists: list[list[tuple[np.ndarray, int]]]) -> list[int]:
        """Replace the k-th closed `<audio>...</audio>` id span with its clips' audio spans (tokenization_qwen's
        `_replace_closed_tag`); unbalanced tags are an error (the model pairs them positionally)."""
        bos, eos, pad = self.audio_bos_id, self.audio_eos_id, self.audio_token_id
        out, k, i = [], 0, 0
        while i < len(ids):
            if ids[i] == eos:
                raise PromptError("the prompt has a </audio> without a matching <audio>")
            if ids[i] != bos:
                out.append(ids[i])
                i += 1
                continue
            try:
                j = ids.index(eos, i + 1)
            except ValueError:
                raise PromptError("the prompt has an <audio> that is never closed with </audio>") from None
            if bos in ids[i + 1 : j] or k >= len(clip_lists):
                raise PromptError(
                    "the <audio>...</audio> spans of the prompt are malformed (nested or on "
                    "several lines); write each as <audio>PATH</audio> on one line"
                )
            for _, L in clip_lists[k]:
                out += [bos] + [pad] * num_audio_tokens(L) + [eos]
            k, i = k + 1, j + 1
        if k != len(clip_lists):
            raise PromptError(f"the prompt has {k} <audio>...</audio> spans but {len(clip_lists)} audio inputs")
        return out

    def _prepare_v1_prompt(
        self, prompt: str, audio: Sequence | None, completion: str | None, budget=None
    ) -> PreparedRequest:
        labels = v1_extract_audio_paths(prompt)
        sources = labels if audio is None else list(audio)
        if len(sources) != len(labels):
            raise PromptError(
                f"the prompt has {len(labels)} <audio>...</audio> spans but {len(sources)} audio "
                "inputs were given; pass one audio per span (or none, to load the span paths)"
            )
        clip_lists = self._audio_clips(sources, budget)
        ids = self._expand_v1_spans(self.tokenizer.encode(prompt), clip_lists)
        return self._finish(
            ids, [m for c in clip_lists for m, _ in c], [L for c in clip_lists for _, L in c], completion, prompt
        )

    def _prepare_v1_messages(self, messages: Sequence[dict], completion: str | None, budget=None) -> PreparedRequest:
        system, history, query, label_sources = v1_messages_to_context_args(messages)
        cache: dict[str, list] = {}  # span label -> clips; make_context may encode a turn and then drop it

        def clips_of(label: str) -> list:
            if label not in cache:
                cache[label] = self._clips(label_sources.get(label, label), f"audio {label!r}", budget)
            return cache[label]

        def encode(text: str) -> list[int]:
            ids = self.tokenizer.encode(text, allowed_special=self.tokenizer.audio_special_tokens)
            return self._expand_v1_spans(ids, [clips_of(label) for label in v1_extract_audio_paths(text)])

        raw_text, ids = make_context_v1(self.tokenizer, query, history, system, encode=encode)
        clip_lists = [clips_of(label) for label in v1_extract_audio_paths(raw_text)]  # the turns that were kept
        return self._finish(
            ids, [m for c in clip_lists for m, _ in c], [L for c in clip_lists for _, L in c], completion, raw_text
        )
