"""The table on stdout, and the same figures as JSON and Markdown under ``bench/results/``."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import Result, Scale
from bench.harness import ROOT

MET = {True: "met", False: "MISSED", None: ""}


def machine() -> dict[str, Any]:
    def git(*argv: str) -> str:
        return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted_changes": bool(git("status", "--porcelain", "--untracked-files=no")),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": model,
        "cpus": os.cpu_count(),
        "memory_gib": round(int(memory) / 2**20, 1),
        "python": platform.python_version(),
    }


def format_value(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if abs(value) >= 100 or float(value).is_integer() else f"{value:,.2f}"


def rows(results: dict[str, list[Result]]) -> list[list[str]]:
    table = []
    for setup, scenario_results in results.items():
        for result in scenario_results:
            for figure in result.figures:
                value = f"{format_value(figure.value)} {figure.unit}"
                table.append([setup, figure.scenario, figure.name, value, figure.target, MET[figure.met]])
            for problem in result.problems:
                table.append([setup, result.scenario, "PROBLEM", problem.splitlines()[0][:90], "", "FAILED"])
    return table


HEADER = ["setup", "scenario", "figure", "value", "target", "met?"]


def text_table(table: list[list[str]]) -> str:
    widths = [max(len(row[column]) for row in [HEADER, *table]) for column in range(len(HEADER))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in [HEADER, *table]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown(table: list[list[str]], meta: dict[str, Any]) -> str:
    lines = [
        "# humaninput benchmark results",
        "",
        f"`make bench` ({meta['scale']}) at commit `{meta['commit']}`"
        f"{' (with uncommitted changes)' if meta['uncommitted_changes'] else ''}, {meta['date']}: "
        f"{meta['cpus']} x {meta['cpu']}, {meta['memory_gib']} GiB, Python {meta['python']}; "
        f"{meta['runtime_seconds']:.0f} s. One daphne process pinned to one CPU, clients on the other. "
        "Targets are for one process on this 2-core machine; ratios compare with baselines of the same run.",
        "",
        "| " + " | ".join(HEADER) + " |",
        "|" + "---|" * len(HEADER),
    ]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in table]
    return "\n".join(lines) + "\n"


def write_reports(results: dict[str, list[Result]], scale: Scale, runtime: float, stem: Path) -> list[str]:
    """Print the table, write ``<stem>.json`` and ``<stem>.md``; the problems of every scenario."""
    meta = {**machine(), "scale": scale.name, "runtime_seconds": round(runtime, 1)}
    table = rows(results)
    print(text_table(table))
    print(f"\n{meta['runtime_seconds']:.0f} s; results in {stem}.json and {stem}.md")
    document = {
        "meta": meta,
        "scale": dataclasses.asdict(scale),
        "setups": {
            setup: [dataclasses.asdict(result) for result in found] for setup, found in results.items()
        },
    }
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(document, indent=1, default=str) + "\n")
    stem.with_suffix(".md").write_text(markdown(table, meta))
    return [
        f"[{setup}] {result.scenario}: {problem}"
        for setup, found in results.items()
        for result in found
        for problem in result.problems
    ]
