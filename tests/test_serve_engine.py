"""The engine's two serving hooks (generation/requests.py): `on_tokens` gives each request's tokens as they come,
and a source's `cancelled()` drops requests, freeing their slots at the next round. Neither changes what the other
requests get."""

import collections

import jax
import pytest

from qwen_audio_jax.config import tiny
from qwen_audio_jax.generation.engine import Engine, EngineRequest, ListSource
from qwen_audio_jax.generation.options import GenerationOptions
from qwen_audio_jax.model.params import init_params
from qwen_audio_jax.text.processor import Processor
from tests._requests import varied_requests
from tests._tokenizer_fixtures import qwen2_tok_dir, qwen2_tokenizer  # noqa: F401

BUDGET = 40  # tokens: more than one decode chunk (32), so a request is cancelled while it decodes


@pytest.fixture(scope="module")
def engine():
    config = tiny()
    return Engine(config, init_params(config, jax.random.PRNGKey(3)), batch_size=2)


@pytest.fixture(scope="module")
def requests(qwen2_tokenizer):  # noqa: F811
    prepared = Processor(qwen2_tokenizer).prepare_many(varied_requests())[:4]
    options = GenerationOptions(max_new_tokens=BUDGET)
    return [EngineRequest(i, p, options.for_request(None, f"r{i}")) for i, p in enumerate(prepared)]


class CancellingSource(ListSource):
    """A list source whose requests in `cancel_after` are cancelled once they have that many tokens (0: before
    they are taken)."""

    def __init__(self, requests, cancel_after: dict):
        super().__init__(requests)
        self.cancel_after, self.pending, self.seen = dict(cancel_after), set(), collections.Counter()

    def on_tokens(self, tag, ids, logprobs, top):
        assert len(ids) == len(logprobs) > 0 and top is None
        self.seen[tag] += len(ids)
        if tag in self.cancel_after and self.seen[tag] >= self.cancel_after[tag]:
            del self.cancel_after[tag]
            self.pending.add(tag)

    def take(self, n, block):
        out = super().take(n, block)
        for r in out:
            if self.cancel_after.get(r.tag) == 0:
                self.pending.add(r.tag)
        return out

    def cancelled(self):
        out, self.pending = self.pending, set()
        return out


def test_on_tokens_gives_every_token_and_changes_nothing(engine, requests):
    plain = dict(engine.run(ListSource(requests)))
    got = collections.defaultdict(list)

    def hook(tag, ids, lps, top):
        assert top is None  # no request asked for alternatives
        got[tag].extend(zip(ids, lps, strict=True))

    streamed = dict(engine.run(ListSource(requests), on_tokens=hook))
    for r in requests:
        assert streamed[r.tag].token_ids == plain[r.tag].token_ids == [t for t, _ in got[r.tag]]
        assert len(plain[r.tag].token_ids) > 1


def test_cancelled_requests_free_their_slots_and_the_rest_is_unchanged(engine, requests):
    """Two slots, four requests: request 0 is cancelled while it decodes (after its first chunk), request 2 as soon
    as the engine takes it (the engine sees that at its next round: after the prefill that gave its first token).
    Each other request gets exactly what it gets alone, and the freed slots serve the next ones."""
    plain = dict(engine.run(ListSource(requests)))
    source = CancellingSource(requests, {0: 2, 2: 0})
    out = list(engine.run(source, on_tokens=source.on_tokens))
    by_tag = dict(out)
    assert sorted(by_tag) == [0, 1, 2, 3] and len(out) == 4
    assert by_tag[0].finish_reason == by_tag[2].finish_reason == "cancelled"
    assert len(by_tag[0].token_ids) < BUDGET  # stopped early: its slot went to the next request
    assert len(by_tag[2].token_ids) <= 1
    for tag in (0, 2):
        assert by_tag[tag].token_ids == plain[tag].token_ids[: len(by_tag[tag].token_ids)]
    for tag in (1, 3):
        assert by_tag[tag].token_ids == plain[tag].token_ids and by_tag[tag].finish_reason != "cancelled"
    # Every slot and page is free again: the same engine serves the whole list as before.
    again = dict(engine.run(ListSource(requests)))
    assert {t: o.token_ids for t, o in again.items()} == {t: o.token_ids for t, o in plain.items()}
