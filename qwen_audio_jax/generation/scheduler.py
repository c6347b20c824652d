"""The engine's host-side bookkeeping, no device code: which slot and which pages each request gets, and which
chunk of which prompt goes into the next prefill call.

Slots and pages are split into D domains (the prefill rows: row d of every prefill call belongs to domain d,
docs/architecture.md "Engine"). A request is admitted in input order to the first domain with a free slot and
enough free pages for its prompt plus its whole budget (reserved up front, so a running request never waits for
a page); a domain prefills one prompt at a time, `chunk` tokens per call.
"""

from __future__ import annotations

import collections
import dataclasses
import math

import numpy as np

from qwen_audio_jax.audio.lengths import num_audio_tokens


@dataclasses.dataclass(frozen=True)
class CacheGeometry:
    """The sizes every program of one engine shares (none depends on the corpus)."""

    slots: int  # B decode slots
    domains: int  # D page domains = prefill rows
    page_size: int  # P tokens per page
    pages: int  # NP pages per domain, the null page 0 included
    max_len: int  # prompt + budget of one request, at most
    feature_rows: int  # rows of one domain's region of the audio feature buffer

    @property
    def slots_per_domain(self) -> int:
        return self.slots // self.domains

    @property
    def max_pages(self) -> int:
        """Page-table entries per slot."""
        return math.ceil(self.max_len / self.page_size)

    def pages_for(self, tokens: int) -> int:
        return math.ceil(tokens / self.page_size)

    @classmethod
    def plan(
        cls,
        slots: int,
        domains: int,
        max_len: int,
        page_size: int,
        cache_tokens: int | None,
        default_tokens_per_slot: int,
        max_clip_rows: int,
    ) -> CacheGeometry:
        """cache_tokens: the pool's tokens over all domains (None: `default_tokens_per_slot` per slot); each
        domain holds at least one request of max_len tokens."""
        per_domain = (cache_tokens or slots * min(max_len, default_tokens_per_slot)) // domains
        per_domain = max(per_domain, max_len)
        pages = math.ceil(per_domain / page_size) + 1
        return cls(slots, domains, page_size, pages, max_len, max_len + max_clip_rows)


@dataclasses.dataclass
class Admitted:
    """A request with its slot and pages, being prefilled (then decoding)."""

    request: object  # an EngineRequest
    domain: int
    slot: int
    pages: list[int]
    start: int = 0  # next prompt position to prefill
    clips_encoded: bool = False

    @property
    def tokens(self) -> np.ndarray:
        return np.asarray(self.request.prepared.token_ids, np.int32)


@dataclasses.dataclass(frozen=True)
class ChunkPlan:
    """One domain's row of the next prefill call."""

    admitted: Admitted
    start: int
    length: int  # real tokens in this chunk
    final: bool
    audio_before: int  # audio slots of the prompt before `start`


class Scheduler:
    """Slots, pages and prefill order of this process's domains (`first` .. `first + count - 1`)."""

    def __init__(self, geometry: CacheGeometry, first_domain: int, domain_count: int, audio_token_id: int):
        self.geometry = geometry
        self.domains = list(range(first_domain, first_domain + domain_count))
        self.audio_token_id = audio_token_id
        spd = geometry.slots_per_domain
        self.free_slots = {d: collections.deque(range(d * spd, (d + 1) * spd)) for d in self.domains}
        self.free_pages = {d: collections.deque(range(1, geometry.pages)) for d in self.domains}
        self.prefilling: dict[int, collections.deque[Admitted]] = {d: collections.deque() for d in self.domains}
        self.running: dict[int, Admitted] = {}  # slot -> request (prefilled or being prefilled)

    # ---- admission ---------------------------------------------------------------------------------------------
    def free_slot_count(self) -> int:
        return sum(len(s) for s in self.free_slots.values())

    def admit(self, request, tokens_needed: int) -> Admitted | None:
        """Gives the request a slot and pages in the first domain that has both; None if none has now."""
        need = self.geometry.pages_for(tokens_needed)
        for d in self.domains:
            if self.free_slots[d] and len(self.free_pages[d]) >= need:
                pages = [self.free_pages[d].popleft() for _ in range(need)]
                adm = Admitted(request, d, self.free_slots[d].popleft(), pages)
                self.prefilling[d].append(adm)
                self.running[adm.slot] = adm
                return adm
        return None

    def release(self, slot: int) -> Admitted:
        """The request in `slot` finished (or failed): its slot and pages are free again."""
        adm = self.running.pop(slot)
        self.free_pages[adm.domain].extend(adm.pages)
        self.free_slots[adm.domain].append(slot)
        queue = self.prefilling[adm.domain]
        if adm in queue:
            queue.remove(adm)
        return adm

    # ---- prefill ------------------------------------------------------------------------------------------------
    def has_prefill(self) -> bool:
        return any(self.prefilling[d] for d in self.domains)

    def current(self, domain: int) -> Admitted | None:
        """The prompt domain `domain` is prefilling now."""
        queue = self.prefilling[domain]
        return queue[0] if queue else None

    def clips_to_encode(self) -> dict[int, list[tuple[np.ndarray, int, int]]]:
        """Per domain, the (mel, valid frames, feature-row offset in the domain's region) of each clip of its
        current prompt, if they are not encoded yet: clip j's rows follow clip j-1's valid rows."""
        out = {}
        for d in self.domains:
            adm = self.current(d)
            if adm is None or adm.clips_encoded or not adm.request.prepared.mels:
                continue
            offset, clips = 0, []
            for mel, length in zip(adm.request.prepared.mels, adm.request.prepared.mel_lengths):
                clips.append((mel, int(length), offset))
                offset += num_audio_tokens(int(length))
            out[d] = clips
        return out

    def mark_encoded(self) -> None:
        for d in self.domains:
            adm = self.current(d)
            if adm is not None:
                adm.clips_encoded = True

    def next_chunks(self, chunk: int) -> dict[int, ChunkPlan]:
        """Each domain's next chunk of its current prompt (at most `chunk` tokens)."""
        plans = {}
        for d in self.domains:
            adm = self.current(d)
            if adm is None:
                continue
            tokens = adm.tokens
            n = min(chunk, len(tokens) - adm.start)
            audio_before = int(np.count_nonzero(tokens[: adm.start] == self.audio_token_id))
            plans[d] = ChunkPlan(adm, adm.start, n, adm.start + n == len(tokens), audio_before)
        return plans

    def advance(self, plan: ChunkPlan) -> None:
        """The chunk was prefilled: the next call continues the prompt, or the domain moves to its next one."""
        plan.admitted.start = plan.start + plan.length
        if plan.final:
            self.prefilling[plan.admitted.domain].popleft()
