"""What the scenarios share: run sizes, the run context, figures with targets, statistics."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.harness import Backend, daphne, http_post_json
from bench.roles import create_body
from harness.server import ServerProcess


@dataclass(frozen=True)
class Scale:
    """How big and how long each scenario runs (``default`` is the issue's workload)."""

    name: str = "default"
    client_processes: int = 2
    # 1. latency
    executions: int = 100
    ws: int = 500
    sse: int = 200
    long_polls: int = 50
    rate: float = 50.0
    seconds: float = 6.0
    # 2. fan-out
    fanout: int = 1000
    rounds: int = 4
    # 3. ingest
    ingest_seconds: float = 3.0
    ingest_concurrency: int = 16
    # 4. idle connections
    idle_levels: tuple[int, ...] = (1000, 5000)
    postgres_idle_levels: tuple[int, ...] = (1000,)
    # 5. polling
    poll_seconds: float = 3.0
    poll_concurrency: int = 32
    waiting_polls: int = 2000
    # 6. channel layer
    layer_seconds: float = 3.0
    layer_rounds: int = 1
    catchup_seconds: float = 5.0


SCALES = {
    "default": Scale(),
    "full": Scale(
        name="full",
        postgres_idle_levels=(1000, 5000),
        seconds=60,
        rounds=20,
        ingest_seconds=20,
        poll_seconds=20,
        layer_seconds=15,
        layer_rounds=3,
    ),
    "smoke": Scale(
        name="smoke",
        executions=4,
        ws=8,
        sse=4,
        long_polls=4,
        rate=20,
        seconds=1,
        fanout=20,
        rounds=2,
        ingest_seconds=0.5,
        ingest_concurrency=4,
        idle_levels=(10, 30),
        postgres_idle_levels=(10, 30),
        poll_seconds=0.5,
        poll_concurrency=4,
        waiting_polls=20,
        layer_seconds=0.5,
        catchup_seconds=1.0,
    ),
}


@dataclass
class Context:
    """One setup's run: its backend, sizes, CPU split and a tag that keeps execution ids unique."""

    backend: Backend
    workdir: Path
    scale: Scale
    server_cpus: set[int] | None
    client_cpus: set[int] | None
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    # Results later scenarios reuse instead of measuring twice (scenario 1 is 6's default-layer e2e).
    earlier: dict[str, Result] = field(default_factory=dict)
    handed_out: int = 0

    def executions(self, name: str, count: int) -> list[str]:
        """``count`` execution ids no earlier call returned: a subscriber that connects without
        a cursor replays its whole log, and an old log would count as minutes of latency."""
        self.handed_out += 1
        return [f"b{self.tag}-{name}-{self.handed_out}-{number}" for number in range(count)]

    def daphne(self, **overrides: str) -> ServerProcess:
        overrides.setdefault("HUMANINPUT_CATCHUP_SECONDS", f"{self.scale.catchup_seconds:g}")
        return daphne(self.backend, self.workdir, self.server_cpus, **overrides)


@dataclass
class Figure:
    scenario: str
    name: str
    value: float | None
    unit: str
    target: str = ""
    met: bool | None = None


@dataclass
class Result:
    """One scenario's figures, its raw details, and its correctness problems (any → exit 1)."""

    scenario: str
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def add(
        self,
        name: str,
        value: float | None,
        unit: str,
        *,
        at_most: float | None = None,
        at_least: float | None = None,
    ) -> None:
        target, met = "", None
        if value is not None and at_most is not None:
            target, met = f"≤ {at_most:g} {unit}", value <= at_most
        elif value is not None and at_least is not None:
            target, met = f"≥ {at_least:g} {unit}", value >= at_least
        self.figures.append(Figure(self.scenario, name, value, unit, target, met))

    def check_deliveries(self, label: str, summary: dict[str, Any], *, detailed: bool = False) -> None:
        """Lost / duplicated / out-of-order figures (one row, or one each), each a problem if not 0."""
        counts = {key: summary[key] for key in ("lost", "duplicated", "out_of_order", "disconnected")}
        if detailed:
            for key in ("lost", "duplicated", "out_of_order"):
                self.add(f"{label} {key.replace('_', '-')}", counts[key], "events", at_most=0)
        else:
            self.add(
                f"{label} lost+dup+out-of-order",
                sum(counts.values()) - counts["disconnected"],
                "events",
                at_most=0,
            )
        if counts["disconnected"]:
            self.add(f"{label} disconnected", counts["disconnected"], "conns", at_most=0)
        for key, count in counts.items():
            if count:
                self.problems.append(f"{label}: {count} {key} ({summary.get('errors')})")


def percentiles(seconds: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p95/p99/max in milliseconds (nearest rank), and the sample count."""
    ordered = sorted(seconds)
    if not ordered:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}

    def rank(fraction: float) -> float:
        return round(ordered[max(0, math.ceil(fraction * len(ordered)) - 1)] * 1000, 2)

    return {"n": len(ordered), "p50": rank(0.5), "p95": rank(0.95), "p99": rank(0.99), "max": rank(1.0)}


def merge(summaries: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The summaries of several client processes of one transport, as one."""
    merged: dict[str, Any] = {
        "connections": 0,
        "deliveries": 0,
        "lost": 0,
        "duplicated": 0,
        "out_of_order": 0,
    }
    merged.update(disconnected=0, errors=[], latencies=[], spread={})
    merged.update(ignored_cancel=0, running_after_cancel=0)
    for summary in summaries:
        for key in ("connections", "deliveries", "lost", "duplicated", "out_of_order", "disconnected"):
            merged[key] += summary[key]
        for key in ("ignored_cancel", "running_after_cancel"):
            merged[key] += summary.get(key, 0)
        merged["errors"] += summary["errors"]
        merged["latencies"] += summary["latencies"]
        for sequence, (event_at, first, last, count) in (summary["spread"] or {}).items():
            known = merged["spread"].setdefault(sequence, [event_at, first, last, 0])
            known[1], known[2], known[3] = min(known[1], first), max(known[2], last), known[3] + count
    return merged


def spread_evenly(items: Sequence[str], count: int) -> list[str]:
    """``count`` items cycling through ``items``: subscribers spread over executions."""
    return [items[number % len(items)] for number in range(count)]


def write_events(port: int, executions: Sequence[str]) -> None:
    """One request (so one event) per execution, through the server (rings its doorbell)."""
    for execution_id in executions:
        status, body = http_post_json(port, "/api/human-input/requests", create_body(execution_id))
        if status != 201:
            raise RuntimeError(f"creating a request answered {status}: {body[:300]!r}")


def with_scale(scale: Scale, **changes: Any) -> Scale:
    return replace(scale, **changes)
