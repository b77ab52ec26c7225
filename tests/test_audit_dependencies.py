"""``.ci/audit_dependencies.py``: a vulnerable pin fails, an unreachable source is not a pass."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "audit_dependencies.py"


def fake_pip_audit(tmp_path: Path, reports: dict[str, object]) -> Path:
    """An executable standing in for pip-audit that prints ``reports[service]`` (or fails)."""
    script = tmp_path / "pip-audit"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"reports = {json.dumps(reports)!r}\n"
        "service = sys.argv[sys.argv.index('--vulnerability-service') + 1]\n"
        "report = json.loads(reports).get(service)\n"
        "if report is None:\n"
        "    sys.exit('ConnectionError: cannot resolve the vulnerability service')\n"
        "print(json.dumps(report))\n"
    )
    script.chmod(0o755)
    return script


def run_audit(tmp_path: Path, reports: dict[str, object], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(fake_pip_audit(tmp_path, reports)), sys.executable],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
    )


def test_a_known_vulnerability_fails_the_audit(tmp_path: Path) -> None:
    report = {
        "dependencies": [
            {"name": "django", "version": "1.0", "vulns": [{"id": "PYSEC-0000-1", "fix_versions": []}]},
            {"name": "httpx", "version": "0.28.1", "vulns": []},
        ]
    }
    result = run_audit(tmp_path, {"pypi": report})
    assert result.returncode == 1
    assert "VULNERABLE django==1.0: PYSEC-0000-1" in result.stdout


def test_a_clean_report_from_one_source_passes(tmp_path: Path) -> None:
    report = {"dependencies": [{"name": "django", "version": "5.2", "vulns": []}]}
    result = run_audit(tmp_path, {"osv": report})
    assert result.returncode == 0
    assert "no known vulnerabilities" in result.stdout


@pytest.mark.parametrize(("strict", "status"), [("0", 0), ("1", 3)])
def test_no_reachable_source_is_reported_as_not_audited(tmp_path: Path, strict: str, status: int) -> None:
    skipped = {"dependencies": [{"name": "django", "version": "5.2", "skip_reason": "not found on PyPI"}]}
    result = run_audit(tmp_path, {"pypi": skipped}, HUMANINPUT_AUDIT_STRICT=strict)
    assert result.returncode == status
    assert "NOT AUDITED" in result.stdout
    assert "no known vulnerabilities" not in result.stdout
