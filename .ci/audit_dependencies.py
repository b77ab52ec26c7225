"""Audit every package installed in the project's venv against known vulnerabilities.

Runs pip-audit (from a venv of its own) on the exact versions ``pip freeze``
reports for the test venv, so transitive dependencies are audited too, not
only the pins we wrote. Exit status:

* 1 if any package has a known vulnerability (CI fails);
* 2 if pip-audit itself could not run;
* 0 otherwise. When no vulnerability source answered for some packages
  (PyPI's JSON API, OSV), they are listed as NOT AUDITED: that is reported,
  never counted as a pass. ``HUMANINPUT_AUDIT_STRICT=1`` makes it exit 3
  instead, for machines that do reach a source.

Usage: python .ci/audit_dependencies.py PIP_AUDIT PROJECT_PYTHON
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

SERVICES = ("pypi", "osv")
AUDIT_TIMEOUT_SECONDS = 300


def frozen_requirements(python: str) -> str:
    frozen = subprocess.run(
        [python, "-m", "pip", "freeze", "--exclude-editable"], check=True, capture_output=True, text=True
    ).stdout
    return "".join(line + "\n" for line in frozen.splitlines() if "==" in line)


def audit(pip_audit: str, requirements: str, service: str) -> dict | None:
    """pip-audit's JSON report, or None when the service could not be reached at all."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as file:
        file.write(requirements)
        file.flush()
        try:
            result = run_pip_audit(pip_audit, file.name, service)
        except subprocess.TimeoutExpired:
            print(f"audit: {service}: pip-audit gave no report within {AUDIT_TIMEOUT_SECONDS} s")
            return None
    try:
        return json.loads(result.stdout)
    except ValueError:
        last_line = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        print(f"audit: {service}: pip-audit gave no report: {last_line}")
        return None


def run_pip_audit(pip_audit: str, requirements_file: str, service: str) -> subprocess.CompletedProcess[str]:
    """One pip-audit run, bounded: CI steps never wait on an unanswering service for long."""
    return subprocess.run(
        [
            pip_audit,
            "--requirement",
            requirements_file,
            "--no-deps",
            "--disable-pip",
            "--format",
            "json",
            "--progress-spinner",
            "off",
            "--timeout",
            "10",
            "--vulnerability-service",
            service,
        ],
        capture_output=True,
        text=True,
        timeout=AUDIT_TIMEOUT_SECONDS,
    )


def main() -> int:
    pip_audit, python = sys.argv[1:3]
    requirements = frozen_requirements(python)
    total = requirements.count("\n")
    unaudited: set[str] = set()
    for service in SERVICES:
        report = audit(pip_audit, requirements, service)
        if report is None:
            continue
        dependencies = report.get("dependencies", [])
        vulnerable = [dep for dep in dependencies if dep.get("vulns")]
        for dep in vulnerable:
            ids = ", ".join(vuln["id"] for vuln in dep["vulns"])
            print(f"audit: VULNERABLE {dep['name']}=={dep['version']}: {ids}")
        if vulnerable:
            return 1
        unaudited = {dep["name"] for dep in dependencies if dep.get("skip_reason")}
        if not unaudited:
            print(f"audit: {total} packages checked against {service}: no known vulnerabilities")
            return 0
        print(f"audit: {service} could not check {len(unaudited)} of {total} packages")
    print(
        f"audit: NOT AUDITED: no vulnerability source ({', '.join(SERVICES)}) answered for "
        f"{len(unaudited) or total} of {total} packages from this machine. This is not a pass."
    )
    return 3 if os.environ.get("HUMANINPUT_AUDIT_STRICT") == "1" else 0


if __name__ == "__main__":
    sys.exit(main())
