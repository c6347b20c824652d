"""The input pipeline of a batch job: requests are prepared (audio read, decoded and resampled, log-mel,
tokens) by a bounded pool of worker threads, ahead of the device, so the next requests are ready when slots
free up (docs/architecture.md, "Input pipeline").

numpy, soxr and libsndfile release the GIL for the heavy parts, so threads overlap with each other and with
the device. At most `ahead` requests are in flight, and at most `ahead_bytes` of their request lines (always at
least one request), which bounds memory whatever the file holds (a 30 s clip's features are 1.5 MB; a request
line may be up to 64 MiB). A request that fails to prepare becomes its error line at once (`on_error`), and the
rest go on.
"""

from __future__ import annotations

import collections
import concurrent.futures as futures
import time
from collections.abc import Callable, Iterable

from qwen_audio_jax.audio.decoder_warmup import realize_decoder_types
from qwen_audio_jax.choices import default_workers
from qwen_audio_jax.errors import QwenAudioError
from qwen_audio_jax.jobs.records import Record


class PreparedStream:
    """Records in, prepared items out (`take`), errors reported through `on_error(id, message)`.

    prepare(record) -> item runs in the workers; an item is whatever the job needs (for generation, an
    EngineRequest). Items come out strictly in input order, `n` at a time (fewer only at the end): so which
    requests are prefilled together, and therefore the programs a job compiles and the order of its results,
    depend on the input alone, never on thread timing. Measured on a 128-request corpus, taking whatever was
    ready instead made a warm-cache rerun compile 10 new programs (26 s of its 108 s).
    """

    def __init__(
        self,
        records: Iterable[Record],
        prepare: Callable[[Record], object],
        on_error: Callable[[str, str], None],
        *,
        workers: int | None = None,
        ahead: int = 64,
        ahead_bytes: int = 256 * 2**20,
    ):
        self._records = iter(records)
        self._prepare, self._on_error = prepare, on_error
        realize_decoder_types()  # before the pool: soundfile's cffi types are not safe to build concurrently
        self._pool = futures.ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="prepare")
        self._ahead, self._ahead_bytes = max(1, ahead), ahead_bytes
        self._pending: collections.deque = collections.deque()  # (record, future), in input order
        self._pending_bytes = 0  # line bytes of the pending records
        self._records_left = True
        self.wait_s = 0.0  # time spent blocked waiting for an item
        self._fill()

    def _fill(self) -> None:
        while (
            self._records_left
            and len(self._pending) < self._ahead
            and (not self._pending or self._pending_bytes < self._ahead_bytes)
        ):
            record = next(self._records, None)
            if record is None:
                self._records_left = False
                break
            if record.error is not None:
                self._on_error(record.id, record.error)
                continue
            self._pending.append((record, self._pool.submit(self._prepare, record)))
            self._pending_bytes += record.size

    def _next(self):
        """The next item in input order, waiting for it; None if its record failed (reported)."""
        record, fut = self._pending.popleft()
        self._pending_bytes -= record.size
        self._fill()
        try:
            return fut.result()
        except QwenAudioError as e:
            self._on_error(record.id, str(e))
        except Exception as e:  # noqa: BLE001 - a bug on one request must not end the job
            first = str(e).splitlines()[0] if str(e) else "no message"
            self._on_error(record.id, f"internal error while preparing the request ({type(e).__name__}: {first}).")
        return None

    def take(self, n: int, block: bool = True) -> list:
        """The next n items in input order (fewer only when the input ends), waiting for them to be prepared.

        `block` is the engine's hint that no slot is decoding; the stream waits either way (workers run up to
        `ahead` requests in front, so it rarely has to) and counts every wait in `wait_s`: while the host
        waits here, the device has nothing queued.
        """
        out = []
        t0 = time.perf_counter()
        while len(out) < n and self._pending:
            item = self._next()
            if item is not None:
                out.append(item)
        self.wait_s += time.perf_counter() - t0
        return out

    @property
    def exhausted(self) -> bool:
        return not self._pending and not self._records_left

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
