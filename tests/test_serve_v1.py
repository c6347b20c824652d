"""`serve` on a Qwen-Audio (v1) chat checkpoint (tiny, random weights, written by the independent oracle of
tests/_v1_reference.py and converted with the CLI): chat (Qwen-Audio-Chat's chatml turns, v1's FFmpeg loader) and
transcription give `generate`'s greedy text for the same request, and verbose_json's `words` are the words and
times of the srwt output, parsed here from `generate`'s token strings (not by jobs/timestamps.py).

A random model writes time tokens only by chance, so before the server starts the checkpoint is edited: the most
frequent token of its srwt answer is given a time token's place (that time token's embedding and output row become the
token's, the output row scaled by 1.05), so wherever the model chose that token it now writes the time token
and goes on exactly as before: its answer then holds words between time tokens.
"""

from __future__ import annotations

import collections
import re
import sys

import pytest
import soundfile as sf

from tests._oracles import require

torch = require("torch", "the v1 oracle (it writes the Qwen-Audio-Chat checkpoint)")

from qwen_audio_jax import api  # noqa: E402
from qwen_audio_jax.cli.main import main  # noqa: E402
from qwen_audio_jax.jobs.timestamps import parse_word_timestamps  # noqa: E402
from tests import _oracles  # noqa: E402
from tests._requests import synth_clip  # noqa: E402
from tests._server import audio_part, generate_results, start_server, stop_server  # noqa: E402
from tests._v1_checkpoint import make_v1_checkpoint_dir  # noqa: E402
from tests._v1_reference import V1Spec, init_random  # noqa: E402

openai = _oracles.require("openai", "the OpenAI client the server is tested with (the test extra)")

NAME = "qwen-audio-chat"
SLOTS, MAX_LEN, NEW = 4, 512, 24
TIME = "<|0.42|>"
STOPS = (151643, 151645)


def _convert(oracle, root, name):
    hf = make_v1_checkpoint_dir(root / f"{name}-hf", model=oracle, chat=True)
    assert main(["convert", str(hf), str(root / name), "--no-progress"]) == 0
    return root / name


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-v1")
    clip = root / "speech.wav"
    sf.write(clip, synth_clip(2.2, seed=4), 16000)
    oracle = init_random(V1Spec(), seed=5)
    probe = api.load(_convert(oracle, root, "probe"))
    srwt = {"id": "w", "task": "srwt", "audio": str(clip)}
    ids = generate_results(probe, [srwt], NEW, SLOTS, MAX_LEN)[0]["token_ids"]
    word = collections.Counter(i for i in ids if i not in STOPS).most_common(1)[0][0]
    time_id = probe.tokenizer.token_to_id(TIME)
    with torch.no_grad():
        oracle.lm_head.weight[time_id] = 1.05 * oracle.lm_head.weight[word]
        oracle.transformer.wte.weight[time_id] = oracle.transformer.wte.weight[word]
    model_dir = _convert(oracle, root, NAME)
    command = [sys.executable, "-m", "qwen_audio_jax.cli.main", "serve", "--model", str(model_dir), "--port", "0"]
    command += ["--batch-size", str(SLOTS), "--max-len", str(MAX_LEN), "--no-progress"]
    proc, url, log = start_server(command, root, root / "server.log")
    yield {"url": url, "proc": proc, "clip": clip, "model": api.load(model_dir), "log": log}
    stop_server(proc)


def _client(served):
    return openai.OpenAI(base_url=served["url"] + "/v1", api_key="none", max_retries=0)


def _generate(served, lines, max_new=NEW) -> list[dict]:
    return generate_results(served["model"], lines, max_new, SLOTS, MAX_LEN)


def test_v1_chat_equals_generate(served):
    clip, question = served["clip"], {"type": "text", "text": "What is in this audio?"}
    turns = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": [{"type": "audio", "audio": str(clip)}, question]},
    ]
    [want] = generate_results(served["model"], [{"id": "c", "messages": turns}], NEW, SLOTS, MAX_LEN, logprobs=True)
    assert served["model"].processor.is_chat and want["text"]
    sent = [turns[0], {"role": "user", "content": [audio_part(clip), question]}]
    reply = _client(served).chat.completions.create(model=NAME, messages=sent, max_tokens=NEW, logprobs=True)
    assert reply.choices[0].message.content == want["text"]
    assert reply.usage.completion_tokens == len(want["token_ids"])
    # Log-probs of every token, ids past the tokenizer's included (a random model picks them; their text is "").
    kept = [lp for i, lp in zip(want["token_ids"], want["logprobs"]) if i not in STOPS]
    entries = reply.choices[0].logprobs.content
    assert [e.logprob for e in entries] == pytest.approx(kept, abs=1e-5)
    stream = _client(served).chat.completions.create(model=NAME, messages=sent, max_tokens=NEW, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == want["text"]


def _words(token_ids: list[int], tokenizer) -> list[dict]:
    """The srwt reading of an output, from its token strings: a word is the text between two time tokens, from
    the first to the second; time tokens in a row only move the start."""
    words, start, pending = [], None, []
    for i in token_ids:
        known = i < tokenizer.vocab_size  # not one of the embedding's padding rows
        m = known and re.fullmatch(r"<\|(\d+\.\d\d)\|>", tokenizer.decode([i], skip_special_tokens=False))
        if not m:
            pending.append(i)
            continue
        text = tokenizer.decode(pending, skip_special_tokens=True).strip()
        if text and start is not None:
            words.append({"word": text, "start": start, "end": float(m.group(1))})
        start, pending = float(m.group(1)), []
    return words


def test_v1_transcription_and_word_timestamps(served):
    clip, client = served["clip"], _client(served)
    asr, srwt = _generate(
        served,
        [{"id": "a", "task": "asr", "audio": str(clip)}, {"id": "w", "task": "srwt", "audio": str(clip)}],
        max_new=256,
    )
    with open(clip, "rb") as f:
        assert client.audio.transcriptions.create(model=NAME, file=f).text == asr["text"]
    with open(clip, "rb") as f:
        verbose = client.audio.transcriptions.create(
            model=NAME, file=f, response_format="verbose_json", timestamp_granularities=["word"]
        )
    want = _words(srwt["token_ids"], served["model"].tokenizer)
    assert len(want) >= 2 and any(0.42 in (w["start"], w["end"]) for w in want)  # the edit made it write TIME
    assert verbose.text == srwt["text"]
    assert [w.model_dump() for w in verbose.words] == want


def test_a_prompt_that_ends_with_a_time_token_opens_the_first_word(served):
    """The srwt preset's prompt ends with <|0.00|> (base models): the answer's first word starts there."""
    tok = served["model"].tokenizer
    t = tok.token_to_id
    ids = [*tok.encode("mister"), t("<|0.42|>"), t("<|0.42|>"), *tok.encode(" quilter"), t("<|0.95|>")]
    prompt = [*tok.encode("x"), t("<|0.00|>")]
    assert parse_word_timestamps(ids, tok, prompt) == [
        {"word": "mister", "start": 0.0, "end": 0.42},
        {"word": "quilter", "start": 0.42, "end": 0.95},
    ]
    assert parse_word_timestamps(ids, tok)[0]["word"] == "quilter"  # no prompt: the first word has no start
