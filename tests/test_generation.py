"""Generation behaviour that needs no oracle: sampling statistics, batch invariance, exact short audio buckets,
bounded compilation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from qwen_audio_jax.audio.features import log_mel_numpy, mel_length
from qwen_audio_jax.config import tiny
from qwen_audio_jax.generation.buckets import Buckets
from qwen_audio_jax.generation.engine import Engine, GenerationOptions
from qwen_audio_jax.generation.sampling import SamplingParams, argmax_first, select_next
from qwen_audio_jax.model.audio_encoder import conv_output_lengths
from qwen_audio_jax.model.params import build_model, init_params
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


@pytest.mark.parametrize(
    "temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (1.3, 5, 1.0), (1.0, 0, 0.8), (0.9, 6, 0.7)]
)
def test_sampled_frequencies_match_the_distribution(temperature, top_k, top_p):
    logits = np.random.default_rng(0).normal(size=12).astype(np.float32) * 1.5
    n = 20_000
    params = SamplingParams.create(temperature=temperature, top_k=top_k, top_p=top_p)
    draw = jax.jit(lambda key: select_next(jnp.broadcast_to(logits, (n, 12)), key, params,
                                           jnp.zeros((n, 12), bool), 0, jnp.asarray([11])))  # fmt: skip
    samples = np.concatenate([np.asarray(draw(jax.random.PRNGKey(seed))) for seed in range(3)])
    counts = np.bincount(samples, minlength=12)
    p = _expected_distribution(logits.astype(np.float64), temperature, top_k, top_p)
    assert counts[p == 0].sum() == 0, "a filtered token was sampled"
    keep = p > 0
    _, pvalue = stats.chisquare(counts[keep], p[keep] / p[keep].sum() * counts.sum())
    assert pvalue > FALSE_ALARM, (counts, p)


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
    params = SamplingParams.create(temperature=1.0)
    a = select_next(logits, jax.random.PRNGKey(5), params, jnp.zeros((4, 50), bool), 0, jnp.asarray([0]))
    b = select_next(logits, jax.random.PRNGKey(5), params, jnp.zeros((4, 50), bool), 0, jnp.asarray([0]))
    c = select_next(logits, jax.random.PRNGKey(6), params, jnp.zeros((4, 50), bool), 0, jnp.asarray([0]))
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
    """A request's greedy output is the same alone and inside a full batch of 8 (fp32)."""
    engine = engine_factory(batch_size=8)
    opts = GenerationOptions(max_new_tokens=48)
    batch = [prepared[i % len(prepared)] for i in range(8)]
    together = engine.generate(batch, opts)
    for i, p in enumerate(prepared):
        alone = engine.generate([p], opts)[0]
        assert alone.token_ids == together[i].token_ids, prepared[i].prompt_text
        assert together[i + len(prepared)].token_ids == alone.token_ids if i + len(prepared) < 8 else True


@pytest.mark.parametrize("seconds", [0.5, 1.01, 2.0, 4.05, 9.98, 29.9])
def test_short_audio_bucket_is_exact(seconds):
    """DESIGN decision 6: encoding the first A >= L + 2 frames gives the 3000-frame valid outputs."""
    config = tiny()
    model = build_model(config)
    params = {"params": init_params(config, jax.random.PRNGKey(0))}
    wav = synth_clip(seconds, seed=2)
    mel = log_mel_numpy(wav, 128)[None]
    length = mel_length(len(wav))
    lengths = jnp.asarray([length])
    full, n = model.apply(params, jnp.asarray(mel), lengths, method="encode_audio")
    n = int(n[0])
    assert n == int(conv_output_lengths(np.asarray([length]))[1][0])
    for a in sorted({Buckets().mel_frames(length), (length + 2 + 3) // 4 * 4}):
        if a > 3000:
            continue
        short, _ = model.apply(params, jnp.asarray(mel[:, :, :a]), lengths, method="encode_audio")
        np.testing.assert_allclose(np.asarray(short)[0, :n], np.asarray(full)[0, :n], atol=1e-5, rtol=0)


def test_too_short_bucket_is_not_exact():
    """The +2 margin is needed: cutting exactly at L frames changes the last valid outputs (so the test above
    can fail)."""
    config = tiny()
    model = build_model(config)
    params = {"params": init_params(config, jax.random.PRNGKey(0))}
    length = 401  # odd: the last valid conv2 output reads frames L-1, L, L+1
    mel = log_mel_numpy(synth_clip(length * 160 / 16000, seed=3), 128)[None]
    lengths = jnp.asarray([length])
    full, n = model.apply(params, jnp.asarray(mel), lengths, method="encode_audio")
    short, _ = model.apply(params, jnp.asarray(mel[:, :, :400]), lengths, method="encode_audio")
    assert np.abs(np.asarray(short)[0, : int(n[0])] - np.asarray(full)[0, : int(n[0])]).max() > 1e-4


def test_bounded_compilation(engine_factory, qwen2_tokenizer):  # noqa: F811
    """30 requests of varied lengths, clip counts and clip durations compile one program per bucket used."""
    buckets = Buckets(lengths=(64, 128, 256, 512, 1024), clips=(1, 2, 4, 8), frames=(500, 1000, 3000))
    engine = engine_factory(batch_size=4, buckets=buckets)
    processor = Processor(qwen2_tokenizer)
    rng = np.random.default_rng(0)
    requests = []
    for i in range(30):
        clips = [synth_clip(float(rng.uniform(0.3, 12.0)), seed=i * 7 + j) for j in range(int(rng.integers(0, 3)))]
        text = " ".join(["word"] * int(rng.integers(1, 120)))
        content = [{"type": "audio", "audio": c} for c in clips] + [{"type": "text", "text": text}]
        requests.append({"messages": [{"role": "user", "content": content}]})
    prepared = processor.prepare_many(requests)
    opts = GenerationOptions(max_new_tokens=4)
    used_prefill, used_decode = set(), set()
    for start in range(0, 30, 4):
        chunk = prepared[start : start + 4]
        t = buckets.prompt_length(max(p.num_tokens for p in chunk))
        lengths = [m for p in chunk for m in p.mel_lengths]
        key = (t, buckets.num_clips(len(lengths)), buckets.mel_frames(max(lengths)) if lengths else 0)
        used_prefill.add(key)
        used_decode.add(t)
        engine.generate(chunk, opts)
    prefill_n, decode_n = engine.compiled_programs()
    assert len(used_prefill) > 4, "the requests must exercise several buckets"
    assert prefill_n == len(used_prefill) and decode_n == len(used_decode)
    assert (prefill_n, decode_n) <= buckets.max_programs()
    # Sampling settings and seeds are traced values: a second pass with other settings compiles nothing new.
    for start in range(0, 30, 4):
        engine.generate(prepared[start : start + 4], GenerationOptions(max_new_tokens=4, temperature=0.8, top_k=20,
                                                                       top_p=0.9, seed=start))  # fmt: skip
    assert engine.compiled_programs() == (prefill_n, decode_n)
