"""vLLM's own ``/metrics``: parse the Prometheus text, diff counters, sample gauges over time.

What the benchmarks read:

* counters (``*_total``): ``vllm:num_preemptions``, ``vllm:prompt_tokens``,
  ``vllm:generation_tokens``, ``vllm:prefix_cache_queries``, ``vllm:prefix_cache_hits``;
* gauges: ``vllm:kv_cache_usage_perc`` (1.0 = every KV block in use),
  ``vllm:num_requests_running`` and ``vllm:num_requests_waiting`` (the queue).

:class:`MetricsSampler` polls ``/metrics`` in a thread while a run goes on and summarises the
timeline: peak KV usage, time at full KV, queue depth, and when the first preemption came.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx

__all__ = [
    "COUNTERS",
    "GAUGES",
    "MetricsSampler",
    "Sample",
    "counter_delta",
    "parse_metrics",
    "scrape",
    "summarize_samples",
]

COUNTERS: tuple[str, ...] = (
    "vllm:num_preemptions",
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
)
GAUGES: tuple[str, ...] = (
    "vllm:kv_cache_usage_perc",
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
)


def parse_metrics(text: str, names: Iterable[str] = COUNTERS + GAUGES) -> dict[str, float]:
    """The values of ``names`` in a Prometheus text exposition, summed over label sets.

    A counter ``x`` is exposed as ``x_total`` (prometheus_client's convention); both
    spellings are accepted and reported as ``x``. Names absent from the text are absent from
    the result.

    Example:
        >>> text = '''# HELP vllm:num_preemptions Cumulative number of preemption.
        ... # TYPE vllm:num_preemptions counter
        ... vllm:num_preemptions_total{engine="0",model_name="m"} 3.0
        ... vllm:num_preemptions_created{engine="0",model_name="m"} 1.79e+09
        ... vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.5
        ... '''
        >>> parse_metrics(text)
        {'vllm:num_preemptions': 3.0, 'vllm:kv_cache_usage_perc': 0.5}
    """
    wanted = set(names)
    values: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name_part, _, rest = line.partition("{") if "{" in line else line.partition(" ")
        name = name_part.strip()
        value_text = rest.rsplit("}", 1)[-1].split() if "{" in line else rest.split()
        if not value_text:
            continue
        key = name.removesuffix("_total") if name.removesuffix("_total") in wanted else name
        if key not in wanted:
            continue
        try:
            value = float(value_text[0])
        except ValueError:
            continue
        if math.isnan(value):
            continue
        values[key] = values.get(key, 0.0) + value
    return values


def counter_delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """``after - before`` for every counter of :data:`COUNTERS` present in both.

    Example:
        >>> counter_delta({"vllm:num_preemptions": 2.0}, {"vllm:num_preemptions": 5.0})
        {'vllm:num_preemptions': 3.0}
    """
    return {
        name: after[name] - before[name] for name in COUNTERS if name in before and name in after
    }


def scrape(server_root: str, *, client: httpx.Client | None = None) -> dict[str, float]:
    """Read ``{server_root}/metrics`` once (``server_root`` without ``/v1``)."""
    url = f"{server_root.rstrip('/')}/metrics"
    response = client.get(url, timeout=10.0) if client else httpx.get(url, timeout=10.0)
    response.raise_for_status()
    return parse_metrics(response.text)


@dataclass(frozen=True)
class Sample:
    """One reading of ``/metrics``: seconds since the sampler started, and the values."""

    t: float
    values: Mapping[str, float]


def summarize_samples(samples: list[Sample], *, full: float = 0.99) -> dict[str, Any]:
    """What a run's timeline shows: KV peak and time at full, queue depth, preemptions.

    Args:
        samples: Readings in time order.
        full: KV usage at or above this counts as a full cache.

    Returns:
        ``peak_kv_cache_usage``, ``seconds_kv_full`` (time with the cache full, from the
        sample intervals), ``max_waiting``, ``mean_waiting``, ``max_running``,
        ``preemptions`` (counter delta over the run) and ``first_preemption_s`` (when the
        counter first rose; ``None`` if it never did).

    Example:
        >>> samples = [
        ...     Sample(0.0, {"vllm:kv_cache_usage_perc": 0.2, "vllm:num_preemptions": 1.0,
        ...                  "vllm:num_requests_waiting": 0.0}),
        ...     Sample(1.0, {"vllm:kv_cache_usage_perc": 1.0, "vllm:num_preemptions": 1.0,
        ...                  "vllm:num_requests_waiting": 3.0}),
        ...     Sample(2.0, {"vllm:kv_cache_usage_perc": 1.0, "vllm:num_preemptions": 4.0,
        ...                  "vllm:num_requests_waiting": 1.0}),
        ... ]
        >>> s = summarize_samples(samples)
        >>> s["peak_kv_cache_usage"], s["seconds_kv_full"], s["preemptions"]
        (1.0, 1.0, 3.0)
        >>> s["first_preemption_s"], s["max_waiting"]
        (2.0, 3.0)
    """

    def series(name: str) -> list[float]:
        return [s.values.get(name, 0.0) for s in samples]

    if not samples:
        return {"samples": 0}
    kv = series("vllm:kv_cache_usage_perc")
    waiting = series("vllm:num_requests_waiting")
    preempt = series("vllm:num_preemptions")
    full_seconds = sum(
        later.t - earlier.t
        for earlier, later in itertools.pairwise(samples)
        if earlier.values.get("vllm:kv_cache_usage_perc", 0.0) >= full
    )
    first = next((s.t for s, p in zip(samples, preempt, strict=True) if p > preempt[0]), None)
    return {
        "samples": len(samples),
        "seconds": round(samples[-1].t - samples[0].t, 1),
        "peak_kv_cache_usage": round(max(kv), 4),
        "mean_kv_cache_usage": round(sum(kv) / len(kv), 4),
        "seconds_kv_full": round(full_seconds, 1),
        "max_waiting": max(waiting),
        "mean_waiting": round(sum(waiting) / len(waiting), 2),
        "max_running": max(series("vllm:num_requests_running")),
        "preemptions": preempt[-1] - preempt[0],
        "first_preemption_s": round(first, 1) if first is not None else None,
    }


@dataclass
class MetricsSampler:
    """Poll ``/metrics`` every ``interval`` seconds in a thread (a context manager).

    Attributes:
        server_root: The server URL without ``/v1``.
        interval: Seconds between readings.
        samples: The readings (seconds since start, values).
    """

    server_root: str
    interval: float = 0.5
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)
    _started: float = field(default=0.0, repr=False)

    def _poll(self) -> None:
        with httpx.Client() as client:
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    values = scrape(self.server_root, client=client)
                    self.samples.append(Sample(time.perf_counter() - self._started, values))
                if self._stop.wait(self.interval):
                    break

    def __enter__(self) -> MetricsSampler:
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._poll, name="metrics-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with contextlib.suppress(httpx.HTTPError):
            values = scrape(self.server_root)
            self.samples.append(Sample(time.perf_counter() - self._started, values))

    def elapsed(self) -> float:
        """Seconds since the sampler started (the timeline's clock)."""
        return time.perf_counter() - self._started
