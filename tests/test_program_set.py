"""A generate job compiles at most 16 programs whatever its corpus; `--precompile` compiles them all up front, so
the job itself then compiles nothing; score stays within its own bound. Programs are counted two ways: the
engine's jit caches, and every XLA compilation the process asked for (persistent-cache hits included), so a
stray program compiled outside the set is caught too."""

import jax
import numpy as np
import pytest

from qwen_audio_jax.api import LoadedModel
from qwen_audio_jax.config import tiny
from qwen_audio_jax.generation.engine import EngineOptions
from qwen_audio_jax.generation.options import GenerationOptions
from qwen_audio_jax.jobs.driver import run_list
from qwen_audio_jax.jobs.generate import GenerateJob
from qwen_audio_jax.jobs.score import ScoreJob
from qwen_audio_jax.model.params import init_params
from qwen_audio_jax.runtime import track_compilations
from qwen_audio_jax.sharding.placement import Placement
from qwen_audio_jax.text.processor import Processor
from tests._requests import synth_clip
from tests._tokenizer_fixtures import qwen2_tok_dir, qwen2_tokenizer  # noqa: F401

LIMIT = 16  # issue: a generate job compiles at most 16 programs for one batch size, mesh and model


@pytest.fixture(scope="module")
def model(qwen2_tokenizer):  # noqa: F811
    config = tiny()
    params = init_params(config, jax.random.PRNGKey(1))
    return LoadedModel(config, params, Processor(qwen2_tokenizer), np.float32, None, Placement.create(None))


def _corpus(kind: str, n: int, seed: int) -> list[dict]:
    """Corpora of very different shapes: short text chats, or clips of 0.2-30 s (0-3 per request), long prompts
    (several prefill chunks), budgets 1-40 and mixed sampling settings."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        r = {"id": f"{kind}{i}", "max_new_tokens": int(rng.integers(1, 41))}
        if kind == "text":
            r["messages"] = [{"role": "user", "content": "hi " * int(rng.integers(1, 30))}]
        else:
            clips = [float(rng.choice([0.2, 1.5, 4.0, 9.0, 19.0, 29.5])) for _ in range(int(rng.integers(0, 4)))]
            text = "word " * int(rng.choice([3, 80, 700, 1500]))
            content = [{"type": "audio", "audio": synth_clip(s, seed=i + j)} for j, s in enumerate(clips)]
            r["messages"] = [{"role": "user", "content": content + [{"type": "text", "text": text}]}]
            if i % 3 == 0:
                r.update(temperature=0.8, top_p=0.9, top_k=int(rng.integers(0, 50)), seed=i)
        out.append(r)
    return out


def _generate(model, requests, precompile=False):
    stats = track_compilations()
    before = stats.backend_compiles
    job = GenerateJob(model, GenerationOptions(max_new_tokens=16), EngineOptions(batch_size=4, precompile=precompile))
    if precompile:
        job.warm_up(progress=False)
        before = stats.backend_compiles
    results = run_list(job, requests)
    return job, results, stats.backend_compiles - before


def test_generate_compiles_a_bounded_set_whatever_the_corpus(model):
    small_job, small, _ = _generate(model, _corpus("text", 10, 0))
    big_job, big, asked = _generate(model, _corpus("audio", 24, 1))
    assert all(r["error"] is None for r in small + big), [r["error"] for r in small + big if r["error"]]
    programs = big_job.engine.compiled_programs()
    assert programs["extend"] == 1 and programs["encode"] >= 3 and programs["prefill"] >= 3, programs
    assert sum(programs.values()) <= big_job.engine.program_bound() <= LIMIT
    assert asked <= LIMIT  # everything XLA compiled during the job, from the set or not
    assert sum(small_job.engine.compiled_programs().values()) <= 4  # init, a prefill bucket or two, decode


def test_precompile_compiles_the_whole_set_and_the_job_then_nothing(model):
    job, results, asked = _generate(model, _corpus("audio", 12, 2), precompile=True)
    assert asked == 0 and all(r["error"] is None for r in results)
    programs = job.engine.compiled_programs()
    assert sum(programs.values()) == job.engine.program_bound()


def test_score_compiles_a_bounded_set(model):
    requests = []
    for i, r in enumerate(_corpus("audio", 10, 3)):
        r.pop("max_new_tokens")
        for k in ("temperature", "top_p", "top_k", "seed"):
            r.pop(k, None)
        requests.append({**r, "completions": ["yes", "no " * (1 + 40 * (i % 3))]})
    stats = track_compilations()
    before = stats.backend_compiles
    job = ScoreJob(model, batch_size=4)
    results = run_list(job, requests)
    assert all(r["error"] is None and len(r["logprob"]) == 2 for r in results)
    assert job.compiled_programs() <= job.program_bound() <= LIMIT
    assert stats.backend_compiles - before <= job.program_bound()
