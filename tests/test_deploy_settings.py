"""The production settings of ``deploy/humaninput.env.example`` pass ``manage.py check --deploy``."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV_EXAMPLE = ROOT / "deploy" / "humaninput.env.example"


def production_environment(**overrides: str) -> dict[str, str]:
    """The example env file as a process sees it, with real secrets in place of ``change-me``."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "HUMANINPUT_"))}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            env[name] = secrets.token_urlsafe(50) if "change-me" in value else value
    env.pop("DATABASE_URL")  # the check needs no database
    env.pop("REDIS_URL")
    return {**env, **overrides}


def check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )


def test_check_deploy_is_clean_with_the_example_production_environment() -> None:
    result = check_deploy(production_environment())
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_fails_without_https_settings() -> None:
    """The check above can fail: without DJANGO_HTTPS the same environment is flagged."""
    result = check_deploy(production_environment(DJANGO_HTTPS="0"))
    assert result.returncode != 0
    assert "SECURE_SSL_REDIRECT" in result.stderr + result.stdout
