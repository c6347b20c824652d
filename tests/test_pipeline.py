"""jobs/pipeline.py: prepared requests come out strictly in input order, n at a time, whatever the workers'
timing, so a job's prefill groups (its programs, its results' order) depend on the input alone."""

import random
import time

from qwen_audio_jax.errors import AudioError
from qwen_audio_jax.jobs.pipeline import PreparedStream
from qwen_audio_jax.jobs.records import Record


def _records(n: int) -> list[Record]:
    return [Record(id=f"r{i}", request={"i": i}, line=i + 1) for i in range(n)]


def _prepare(record: Record):
    rng = random.Random(record.request["i"])
    time.sleep(rng.choice([0.0, 0.0, 0.002, 0.02]))  # later requests are often ready before earlier ones
    if record.request["i"] % 7 == 3:
        raise AudioError(f"{record.id}: unreadable")
    return record.request["i"]


def test_items_come_in_input_order_and_whole_groups():
    errors = []
    groups = []
    with PreparedStream(_records(40), _prepare, lambda rid, msg: errors.append(rid), workers=4, ahead=8) as stream:
        while not stream.exhausted:
            groups.append(stream.take(5, block=False))
    good = [i for i in range(40) if i % 7 != 3]
    assert [len(g) for g in groups] == [5] * (len(good) // 5) + ([len(good) % 5] if len(good) % 5 else [])
    assert [i for g in groups for i in g] == good
    assert errors == [f"r{i}" for i in range(40) if i % 7 == 3]
    assert stream.wait_s > 0
