"""Generation behaviour that needs no oracle: sampling statistics, batch invariance, exact short audio buckets,
bounded compilation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from qwen_audio_jax.audio.features import log_mel_numpy, mel_length
from qwen_audio_jax.audio.lengths import encoder_lengths
from qwen_audio_jax.batching.buckets import Buckets
from qwen_audio_jax.config import tiny
from qwen_audio_jax.generation.engine import Engine, EngineRequest, ListSource
from qwen_audio_jax.generation.options import GenerationOptions, SamplingSettings
from qwen_audio_jax.generation.sampling import SamplingParams, argmax_first, select_next
from qwen_audio_jax.model.params import build_module, init_params
from qwen_audio_jax.text.processor import Processor
from tests._requests import synth_clip, varied_requests
from tests._tokenizer_fixtures import qwen2_tok_dir, qwen2_tokenizer  # noqa: F401

FALSE_ALARM = 1e-4  # per statistical test


def _expected_distribution(logits, temperature, top_k, top_p):
    """transformers' warpers in numpy: temperature, then top-k (ties kept), then top-p (ascending cumsum)."""
    x = logits / temperature
    if top_k:
        x = np.where(x < np.sort(x)[::-1][top_k - 1], -np.inf, x)
    if top_p < 1.0:
        order = np.argsort(x)
        p = np.exp(x[order] - x.max())
        cum = np.cumsum(p / p.sum())
        remove = cum <= 1 - top_p
        remove[-1] = False
        x = x.copy()
        x[order[remove]] = -np.inf
    p = np.exp(x - x.max())
    return p / p.sum()


def _rows(n, temperature=0.0, top_k=0, top_p=1.0, repetition_penalty=1.0, min_new_tokens=0):
    """The same sampling settings on n rows (traced per-row values)."""
    return SamplingParams.rows([SamplingSettings(temperature, top_k, top_p, repetition_penalty, min_new_tokens)] * n)


def _keys(n, seed):
    return jax.random.split(jax.random.PRNGKey(seed), n)


@pytest.mark.parametrize(
    "temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 5, 1.0), (1.0, 0, 0.8), (0.9, 6, 0.7)]
)
def test_sampled_frequencies_match_the_distribution(temperature, top_k, top_p):
    logits = np.random.default_rng(0).normal(size=12).astype(np.float32) * 1.5
    n = 20_000
    params = _rows(n, temperature=temperature, top_k=top_k, top_p=top_p)
    draw = jax.jit(
        lambda keys: select_next(
            jnp.broadcast_to(logits, (n, 12)),
            keys,
            params,
            jnp.zeros((n, 12), bool),
            jnp.zeros(n, jnp.int32),
            jnp.asarray([11]),
        )
    )
    samples = np.concatenate([np.asarray(draw(_keys(n, seed))) for seed in range(3)])
    counts = np.bincount(samples, minlength=12)
    p = _expected_distribution(logits.astype(np.float64), temperature, top_k, top_p)
    assert counts[p == 0].sum() == 0, "a filtered token was sampled"
    keep = p > 0
    _, pvalue = stats.chisquare(counts[keep], p[keep] / p[keep].sum() * counts.sum())
    assert pvalue > FALSE_ALARM, (counts, p)


def test_rows_follow_their_own_settings():
    """One batch, different settings per row: greedy rows are the argmax, top-k=1 rows too, sampling rows vary
    with their keys, and a top-k row never leaves its k best tokens."""
    logits = jnp.asarray(np.random.default_rng(2).normal(size=(4, 40)), jnp.float32)
    params = SamplingParams.rows(
        [SamplingSettings(), SamplingSettings(0.8, top_k=1), SamplingSettings(1.0), SamplingSettings(1.0, top_k=3)]
    )
    greedy = np.asarray(jnp.argmax(logits, -1))
    top3 = np.argsort(np.asarray(logits), -1)[:, -3:]
    drawn = np.stack(
        [
            np.asarray(
                select_next(
                    logits, _keys(4, s), params, jnp.zeros((4, 40), bool), jnp.zeros(4, jnp.int32), jnp.asarray([0])
                )
            )
            for s in range(200)
        ]
    )
    assert (drawn[:, 0] == greedy[0]).all() and (drawn[:, 1] == greedy[1]).all()
    assert len(set(drawn[:, 2])) > 5
    assert np.isin(drawn[:, 3], top3[3]).all() and len(set(drawn[:, 3])) == 3


@pytest.mark.parametrize("vocab", [1, 127, 128, 1000, 156032])
def test_argmax_first_equals_jnp_argmax(vocab):
    """Greedy decoding's two-pass argmax: same index as jnp.argmax, ties (first wins), -inf rows and NaN included."""
    rng = np.random.default_rng(vocab)
    x = rng.normal(size=(7, vocab)).astype(np.float32)
    x[1] = np.round(x[1])  # many ties; the first maximal index must win
    x[2] = -np.inf
    x[3, rng.integers(vocab, size=3)] = np.nan
    x[4, -1] = 100.0  # the maximum in the last (padded) block
    x[5] = 0.0
    x[5, vocab // 2] = 1.0
    x[6, :] = rng.integers(0, 2, size=vocab)  # ties spanning blocks
    got = np.asarray(jax.jit(argmax_first)(jnp.asarray(x)))
    np.testing.assert_array_equal(got, np.asarray(jnp.argmax(jnp.asarray(x), axis=-1)))
    assert got[4] == vocab - 1 and got[5] == vocab // 2


def test_sampling_is_seeded():
    logits = jnp.asarray(np.random.default_rng(1).normal(size=(4, 50)), jnp.float32)
    params, seen, n, stop = (
        _rows(4, temperature=1.0),
        jnp.zeros((4, 50), bool),
        jnp.zeros(4, jnp.int32),
        jnp.asarray([0]),
    )
    a = select_next(logits, _keys(4, 5), params, seen, n, stop)
    b = select_next(logits, _keys(4, 5), params, seen, n, stop)
    c = select_next(logits, _keys(4, 6), params, seen, n, stop)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.fixture(scope="module")
def engine_factory():
    config = tiny()
    params = init_params(config, jax.random.PRNGKey(3))

    def make(**kw):
        return Engine(config, params, **kw)

    return make


@pytest.fixture(scope="module")
def prepared(qwen2_tokenizer):  # noqa: F811
    return Processor(qwen2_tokenizer).prepare_many(varied_requests())


def test_batch_invariance(engine_factory, prepared):
    """A request's greedy output is the same alone and among 7 neighbours (fp32)."""
    engine = engine_factory(batch_size=8)
    opts = GenerationOptions(max_new_tokens=48)
    batch = [prepared[i % len(prepared)] for i in range(8)]
    together = engine.generate(batch, opts)
    for i, p in enumerate(prepared):
        alone = engine.generate([p], opts)[0]
        assert alone.token_ids == together[i].token_ids, prepared[i].prompt_text
        if i + len(prepared) < 8:
            assert together[i + len(prepared)].token_ids == alone.token_ids


def test_recycled_slots_give_the_same_tokens(engine_factory, prepared):
    """Two slots, six requests with their own budgets (1 to 40 tokens) and a sampled one: every request is
    inserted into a freed slot mid-run, and each result equals the request generated alone."""
    engine = engine_factory(batch_size=2)
    base = GenerationOptions(max_new_tokens=40)
    budgets = [40, 3, 17, 1, 29, 8]
    reqs = []
    for i, (p, n) in enumerate(zip(prepared, budgets)):
        record = {"max_new_tokens": n} if i != 4 else {"max_new_tokens": n, "temperature": 0.9, "top_p": 0.9, "seed": 7}
        reqs.append(EngineRequest(i, p, base.for_request(record, f"r{i}")))
    together = dict(engine.run(ListSource(reqs)))
    assert engine.stats.prefills >= 4  # slots really were refilled while others decoded
    for r in reqs:
        alone = dict(engine.run(ListSource([r])))[r.tag]
        assert together[r.tag].token_ids == alone.token_ids
        assert len(alone.token_ids) <= budgets[r.tag]
        assert alone.finish_reason == "stop" or len(alone.token_ids) == budgets[r.tag]


def test_a_failing_request_gets_its_own_error(engine_factory, prepared):
    """A device failure while prefilling a group: each request is retried alone, so only the one that cannot run
    gets an error (the others equal their runs alone)."""
    engine = engine_factory(batch_size=4)
    opts = GenerationOptions(max_new_tokens=6)
    want = engine.generate(prepared[:4], opts)
    others = {t for i in (0, 1, 3) for t in prepared[i].token_ids}
    poison = next(t for t in prepared[2].token_ids if t not in others)  # a token only request 2 holds
    real = engine.programs._prefill

    def flaky(params, state, features, rows, *rest):  # rest: the stop ids and the traced top-logprobs flag
        if bool((np.asarray(rows.tokens) == poison).any()):
            raise RuntimeError("RESOURCE_EXHAUSTED: out of memory while prefilling")
        return real(params, state, features, rows, *rest)

    engine.programs._prefill = flaky
    got = engine.generate(prepared[:4], opts)
    assert "out of memory" in got[2].error and got[2].token_ids == [] and got[2].finish_reason is None
    for i in (0, 1, 3):
        assert got[i].error is None and got[i].token_ids == want[i].token_ids


@pytest.mark.parametrize("seconds", [0.5, 1.01, 2.0, 4.05, 9.98, 29.9])
def test_short_audio_bucket_is_exact(seconds):
    """docs/decisions.md §6: encoding the first A >= L + 2 frames gives the 3000-frame valid
    outputs."""
    config = tiny()
    model = build_module(config)
    params = {"params": init_params(config, jax.random.PRNGKey(0))}
    wav = synth_clip(seconds, seed=2)
    mel = log_mel_numpy(wav, 128)[None]
    length = mel_length(len(wav))
    lengths = jnp.asarray([length])
    full, n = model.apply(params, jnp.asarray(mel), lengths, method="encode_audio")
    n = int(n[0])
    assert n == int(encoder_lengths(np.asarray([length]))[1][0])
    for a in sorted({Buckets().mel_frames(length), (length + 2 + 3) // 4 * 4}):
        if a > 3000:
            continue
        short, _ = model.apply(params, jnp.asarray(mel[:, :, :a]), lengths, method="encode_audio")
        np.testing.assert_allclose(np.asarray(short)[0, :n], np.asarray(full)[0, :n], atol=1e-5, rtol=0)


def test_too_short_bucket_is_not_exact():
    """The +2 margin is needed: cutting exactly at L frames changes the last valid outputs (so the test above
    can fail)."""
    config = tiny()
    model = build_module(config)
    params = {"params": init_params(config, jax.random.PRNGKey(0))}
    length = 401  # odd: the last valid conv2 output reads frames L-1, L, L+1
    mel = log_mel_numpy(synth_clip(length * 160 / 16000, seed=3), 128)[None]
    lengths = jnp.asarray([length])
    full, n = model.apply(params, jnp.asarray(mel), lengths, method="encode_audio")
    short, _ = model.apply(params, jnp.asarray(mel[:, :, :400]), lengths, method="encode_audio")
    assert np.abs(np.asarray(short)[0, : int(n[0])] - np.asarray(full)[0, : int(n[0])]).max() > 1e-4


def test_bounded_compilation(engine_factory, qwen2_tokenizer):  # noqa: F811
    """60 requests of varied lengths, clip counts, clip durations and budgets compile at most one program per
    family and bucket (and never more than the set's bound); other sampling settings and seeds compile nothing
    new. tests/test_program_set.py counts whole jobs over very different corpora."""
    buckets = Buckets(chunks=(64, 128, 256), inference_frames=(500, 1000, 3000))
    engine = engine_factory(batch_size=4, buckets=buckets)
    processor = Processor(qwen2_tokenizer)
    rng = np.random.default_rng(0)
    records = []
    for i in range(60):
        clips = [synth_clip(float(rng.uniform(0.3, 8.0)), seed=i * 7 + j) for j in range(int(rng.integers(0, 3)))]
        text = " ".join(["word"] * int(rng.integers(1, 100)))
        content = [{"type": "audio", "audio": c} for c in clips] + [{"type": "text", "text": text}]
        records.append(({"messages": [{"role": "user", "content": content}]}, int(rng.integers(1, 8))))
    prepared = processor.prepare_many([r for r, _ in records])
    opts = GenerationOptions(max_new_tokens=12)

    def job(**sampling):
        return [
            EngineRequest(i, p, opts.for_request({"max_new_tokens": n, **sampling}, str(i)))
            for i, (p, (_, n)) in enumerate(zip(prepared, records))
        ]

    out = dict(engine.run(ListSource(job())))
    assert len(out) == 60 and all(len(out[i].token_ids) <= n for i, (_, n) in enumerate(records))
    programs = engine.compiled_programs()
    assert programs["prefill"] >= 2 and programs["extend"] == 1 and programs["encode"] >= 2, programs
    assert programs["prefill"] <= len(buckets.chunks) and programs["encode"] <= len(buckets.inference_frames)
    assert programs["init"] == programs["decode"] == 1
    assert sum(programs.values()) <= engine.program_bound() == 1 + 3 + 3 + 1 + 1
    dict(engine.run(ListSource(job(temperature=0.8, top_k=20, top_p=0.9, seed=3))))
    assert engine.compiled_programs() == programs
