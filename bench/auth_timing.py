"""Auth timing: does a wrong token's 401 take as long whatever share of the API key it matches?

``python -m bench.auth_timing [--setup embedded|postgres] [--samples 1000] [--calls 20000]``

``auth.matches_secret`` hashes both sides with SHA-256 and compares the
digests with ``hmac.compare_digest``, so neither the key's length nor how
much of it a token matches should show in the time a refusal takes. Four
classes of wrong token, each as long as the key (100 characters, set for
the run): *random*, the baseline; *prefix 0 %* (the first character already
differs); *prefix 50 %*; *prefix 99 %* (all but the last character right).
Every sample draws a fresh token of its class.

- In-process: a Django-set-up process (the server's settings) times
  ``matches_secret(token, key)`` and the whole ``authenticate(token=...)``
  refusal, ``--calls`` calls per class per round, the classes in a new
  random order each round; nanoseconds per call, median and p99 over
  rounds.
- Over HTTP: one daphne; a client process sends ``--samples`` requests per
  class with ``Authorization: Bearer <token>`` to the poll view, the SSE view
  and the REST list, all classes and endpoints shuffled into one sequence on
  one keep-alive connection (so each request has the server to itself);
  milliseconds per 401, median and p99.

Each class's median and p99 are printed with their ratio to the random
baseline: a leak of how much matched would show as ratios growing with the
prefix. Speed is reported, never asserted; any answer other than 401 is a
problem (exit 1).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import signal
import string
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from bench.common import SCALES, Context, Result
from bench.harness import (
    Control,
    backend,
    cpu_split,
    exit_status,
    raise_fd_limit,
    run_once,
    scratch_dir,
    server_env,
)
from bench.report import rows, text_table
from bench.roles import LONG, HttpConnection

KEY_LENGTH = 100
CLASSES = ("random", "prefix 0 %", "prefix 50 %", "prefix 99 %")
ENDPOINTS = {
    "poll": "/poll/human-input/bench-auth-timing",
    "sse": "/events/human-input/bench-auth-timing",
    "rest": "/api/human-input/requests",
}
ALPHABET = string.ascii_letters + string.digits + "-_"


def wrong_token(rng: random.Random, key: str, kind: str) -> str:
    """A token of ``kind`` for ``key``: as long as the key, never equal to it."""
    if kind == "random":
        return "".join(rng.choices(ALPHABET, k=len(key)))
    keep = {"prefix 0 %": 0, "prefix 50 %": len(key) // 2, "prefix 99 %": len(key) - 1}[kind]
    differing = rng.choice([c for c in ALPHABET if c != key[keep]])
    return key[:keep] + differing + "".join(rng.choices(ALPHABET, k=len(key) - keep - 1))


def nearest_rank(ordered: list[float], fraction: float) -> float:
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def summarize(samples: dict[str, list[float]], unit: float) -> dict[str, dict[str, Any]]:
    """Median and p99 per class (``samples`` times ``unit``), and their ratios to the random baseline."""
    summary: dict[str, dict[str, Any]] = {}
    for kind in CLASSES:
        ordered = sorted(value * unit for value in samples[kind])
        summary[kind] = {
            "n": len(ordered),
            "median": round(nearest_rank(ordered, 0.5), 4),
            "p99": round(nearest_rank(ordered, 0.99), 4),
        }
    base = summary["random"]
    for figures in summary.values():
        figures["median ratio"] = round(figures["median"] / base["median"], 3)
        figures["p99 ratio"] = round(figures["p99"] / base["p99"], 3)
    return summary


# --- client processes --------------------------------------------------------------------------------


def _time_in_process(env: dict[str, str], key: str, rounds: int, calls: int, seed: int) -> dict[str, Any]:
    """ns per call of ``matches_secret`` and of an ``authenticate`` refusal, per class and round."""
    os.environ.update(env)
    import django  # here: the process takes the server's environment first

    django.setup()
    from events_app.auth import authenticate, matches_secret  # importable only once Django is set up
    from events_app.exceptions import NotAuthenticated

    def refuse(token: str) -> None:
        try:
            authenticate(token=token)
        except NotAuthenticated:
            return
        raise AssertionError("a wrong token was accepted")

    rng = random.Random(seed)
    measured: dict[str, dict[str, list[float]]] = {"matches_secret": defaultdict(list)}
    measured["authenticate"] = defaultdict(list)
    for _ in range(rounds):
        for kind in rng.sample(CLASSES, len(CLASSES)):
            tokens = [wrong_token(rng, key, kind) for _ in range(calls)]
            started = time.perf_counter_ns()
            for token in tokens:
                if matches_secret(token, key):
                    raise AssertionError("a wrong token matched")
            measured["matches_secret"][kind].append((time.perf_counter_ns() - started) / calls)
            started = time.perf_counter_ns()
            for token in tokens[: max(1, calls // 10)]:
                refuse(token)
            measured["authenticate"][kind].append((time.perf_counter_ns() - started) / max(1, calls // 10))
    return {name: dict(per_class) for name, per_class in measured.items()}


async def in_process_timing(
    control: Control, *, index: int, env: dict[str, str], key: str, rounds: int, calls: int, seed: int
) -> dict[str, Any]:
    """The in-process measurement, in a thread (Django refuses sync ORM set-up inside a loop)."""
    control.send("ready")
    await control.expect("go", LONG)
    return await asyncio.to_thread(_time_in_process, env, key, rounds, calls, seed)


async def http_timing(
    control: Control, *, index: int, port: int, key: str, samples: int, seed: int
) -> dict[str, Any]:
    """Latency of each 401, one request at a time on one keep-alive connection, in a shuffled order."""
    rng = random.Random(seed)
    plan = [(endpoint, kind) for endpoint in ENDPOINTS for kind in CLASSES for _ in range(samples)]
    rng.shuffle(plan)
    connection = HttpConnection(port)
    await connection.open()
    control.send("ready")
    await control.expect("go", LONG)
    latencies: dict[str, dict[str, list[float]]] = {endpoint: defaultdict(list) for endpoint in ENDPOINTS}
    statuses: Counter[int] = Counter()
    try:
        for endpoint, kind in plan:
            headers = {"Authorization": f"Bearer {wrong_token(rng, key, kind)}"}
            sent = time.perf_counter()
            connection.send("GET", ENDPOINTS[endpoint], headers=headers)
            status, response_headers = await connection.head()
            async for _ in connection.chunks(response_headers):
                pass
            latencies[endpoint][kind].append(time.perf_counter() - sent)
            statuses[status] += 1
    finally:
        connection.close()
    return {
        "latencies": {endpoint: dict(found) for endpoint, found in latencies.items()},
        "statuses": statuses,
    }


# --- the scenario ---------------------------------------------------------------------------------------


def add_figures(result: Result, label: str, summary: dict[str, dict[str, Any]], unit: str) -> None:
    for kind in CLASSES:
        figures = summary[kind]
        result.add(f"{label} {kind}: median", figures["median"], unit)
        result.add(f"{label} {kind}: p99", figures["p99"], unit)
        if kind != "random":
            result.add(f"{label} {kind}: median / random", figures["median ratio"], "x")
            result.add(f"{label} {kind}: p99 / random", figures["p99 ratio"], "x")


def run(ctx: Context, *, samples: int | None = None, calls: int | None = None, seed: int = 1) -> Result:
    result = Result("auth timing")
    smoke = ctx.scale.name == "smoke"
    samples = samples or (30 if smoke else 1000)
    calls = calls or (200 if smoke else 20_000)
    rounds = 5 if smoke else 30
    key = "".join(random.Random(seed).choices(ALPHABET, k=KEY_LENGTH))
    env = server_env(ctx.backend, HUMANINPUT_API_KEY=key)
    local = run_once(
        in_process_timing, ctx.client_cpus, 120, env=env, key=key, rounds=rounds, calls=calls, seed=seed
    )
    for name in ("matches_secret", "authenticate"):
        summary = summarize(local[name], 1.0)  # ns per call
        add_figures(result, f"in-process {name}", summary, "ns")
        result.details[name] = summary
    server = ctx.daphne(HUMANINPUT_API_KEY=key)
    try:
        remote = run_once(
            http_timing, ctx.client_cpus, 600, port=server.port, key=key, samples=samples, seed=seed
        )
    finally:
        server.stop()
    if set(remote["statuses"]) != {401}:
        result.problems.append(f"wrong tokens were answered {dict(remote['statuses'])}, not only 401")
    for endpoint, latencies in remote["latencies"].items():
        summary = summarize(latencies, 1000.0)  # s to ms
        add_figures(result, f"HTTP {endpoint}", summary, "ms")
        result.details[f"http {endpoint}"] = summary
    return result


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.auth_timing", description=__doc__.split("\n\n")[0])
    parser.add_argument("--setup", choices=["embedded", "postgres"], default="embedded")
    parser.add_argument("--samples", type=int, default=1000, help="HTTP requests per class and endpoint")
    parser.add_argument("--calls", type=int, default=20_000, help="in-process calls per class and round")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="tiny counts, seconds")
    args = parser.parse_args()
    # A TERM (CI timeout, kill) unwinds like Ctrl-C: server stopped, database dropped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise_fd_limit()
    server_cpus, client_cpus = cpu_split()
    scale = SCALES["smoke" if args.smoke else "default"]
    workdir = scratch_dir(Path("/tmp/humaninput-bench"))
    began = time.monotonic()
    result = Result("auth timing")
    try:
        with backend(args.setup, workdir, redis_db=15 if args.smoke else 14) as chosen:
            ctx = Context(chosen, workdir, scale, server_cpus, client_cpus)
            result = run(
                ctx,
                samples=None if args.smoke else args.samples,
                calls=None if args.smoke else args.calls,
                seed=args.seed,
            )
    finally:
        print(text_table(rows({args.setup: [result]})))
        print(f"\n{time.monotonic() - began:.0f} s")
        status = exit_status(result.problems, workdir)
    return status


if __name__ == "__main__":
    sys.exit(main())
