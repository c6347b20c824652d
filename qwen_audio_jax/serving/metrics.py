"""Prometheus metrics of the server (`GET /metrics`), in a registry of its own (prometheus-client).

qwen_audio_jax_requests_total{endpoint, status}     answered requests, by HTTP status
qwen_audio_jax_prompt_tokens_total                  prompt tokens of the requests run
qwen_audio_jax_generation_tokens_total              tokens generated
qwen_audio_jax_queue_depth                          requests waiting for a slot
qwen_audio_jax_slots_in_use / _slots                requests the engine holds / decode slots
qwen_audio_jax_time_to_first_token_seconds          from enqueue to the first token (histogram)
qwen_audio_jax_inter_token_latency_seconds          between a request's token deliveries, per token (histogram)
qwen_audio_jax_request_latency_seconds              from arrival to the last token (histogram)
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily

PREFIX = "qwen_audio_jax"
_TTFT = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_ITL = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_E2E = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, slots: int, queue_depth, slots_in_use, cancelled=lambda: 0):
        self.registry = r = CollectorRegistry()
        self.requests = Counter(f"{PREFIX}_requests", "Answered requests", ["endpoint", "status"], registry=r)
        self.prompt_tokens = Counter(f"{PREFIX}_prompt_tokens", "Prompt tokens of the requests run", registry=r)
        self.generation_tokens = Counter(f"{PREFIX}_generation_tokens", "Generated tokens", registry=r)
        Gauge(f"{PREFIX}_queue_depth", "Requests waiting for a decode slot", registry=r).set_function(queue_depth)
        Gauge(f"{PREFIX}_slots_in_use", "Requests the engine holds", registry=r).set_function(slots_in_use)
        Gauge(f"{PREFIX}_slots", "Decode slots", registry=r).set(slots)
        r.register(_CountedBy(f"{PREFIX}_cancelled_requests", "Requests the engine dropped", cancelled))
        self.ttft = Histogram(
            f"{PREFIX}_time_to_first_token_seconds", "Enqueue to first token", buckets=_TTFT, registry=r
        )
        self.itl = Histogram(f"{PREFIX}_inter_token_latency_seconds", "Per-token latency", buckets=_ITL, registry=r)
        self.e2e = Histogram(f"{PREFIX}_request_latency_seconds", "Arrival to last token", buckets=_E2E, registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _CountedBy:
    """A counter whose value another object keeps (the engine loop's count of cancelled requests)."""

    def __init__(self, name: str, doc: str, value):
        self.name, self.doc, self.value = name, doc, value

    def collect(self):
        yield CounterMetricFamily(self.name, self.doc, value=self.value())
