"""``python -m bench [--full | --smoke] [--setup embedded|postgres] [--only NAME ...]``.

Runs every scenario on the embedded setup (SQLite + in-memory layer) and on
PostgreSQL + Redis, prints one table (figure, target, met/missed), writes
``bench/results/<name>.json`` and ``.md``, and exits 1 if any event was lost,
duplicated or delivered out of order (or a scenario failed to run). Speed is
reported, never asserted.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import traceback
from pathlib import Path

from bench import channel_layer, connections, fanout, ingest, latency, polling
from bench.common import SCALES, Context, Result
from bench.harness import backend, cpu_split, raise_fd_limit, remove_dir, scratch_dir
from bench.report import write_reports

SCENARIOS = {
    "latency": latency.run,
    "fanout": fanout.run,
    "ingest": ingest.run,
    "connections": connections.run,
    "polling": polling.run,
    "channel_layer": channel_layer.run,
}
RESULTS = Path(__file__).resolve().parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_const", const="full", dest="scale", help="longer runs")
    size.add_argument(
        "--smoke", action="store_const", const="smoke", dest="scale", help="tiny counts, seconds"
    )
    parser.add_argument("--setup", choices=["embedded", "postgres"], action="append", help="default: both")
    parser.add_argument("--only", choices=list(SCENARIOS), action="append", help="default: all")
    parser.add_argument(
        "--output", help="results file name without extension (default: latest, smoke: smoke)"
    )
    args = parser.parse_args()
    scale = SCALES[args.scale or "default"]
    setups = args.setup or ["embedded", "postgres"]
    chosen = args.only or list(SCENARIOS)
    # A TERM (CI timeout, kill) unwinds like Ctrl-C: servers stopped, database dropped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise_fd_limit()
    server_cpus, client_cpus = cpu_split()
    started = time.monotonic()
    results: dict[str, list[Result]] = {}
    workdir = scratch_dir(Path("/tmp/humaninput-bench"))
    try:
        for setup in setups:
            results[setup] = []
            with backend(setup, workdir, redis_db=15 if scale.name == "smoke" else 14) as chosen_backend:
                ctx = Context(chosen_backend, workdir, scale, server_cpus, client_cpus)
                for name in chosen:
                    if name == "channel_layer" and chosen_backend.redis_url is None:
                        continue
                    print(f"[{setup}] {name} ...", file=sys.stderr, flush=True)
                    began = time.monotonic()
                    try:
                        result = SCENARIOS[name](ctx)
                    except Exception:
                        result = Result(name, problems=[f"crashed:\n{traceback.format_exc()}"])
                    result.details["seconds"] = round(time.monotonic() - began, 1)
                    results[setup].append(result)
        output = args.output or ("smoke" if scale.name == "smoke" else "latest")
        problems = write_reports(results, scale, time.monotonic() - started, RESULTS / output)
        for problem in problems:
            print(f"PROBLEM: {problem}", file=sys.stderr)
        if problems:
            print(f"server logs kept in {workdir}", file=sys.stderr)
            return 1
    finally:
        if not results or not any(result.problems for found in results.values() for result in found):
            remove_dir(workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
