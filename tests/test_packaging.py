"""``pip install .`` gives another project the whole app: code, migrations, templates, static files."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_carries_templates_static_files_and_migrations(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--quiet",
            "--wheel-dir",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("humaninput-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in [
        "events_app/models.py",
        "events_app/migrations/0001_initial.py",
        "events_app/templatetags/humaninput.py",
        "events_app/templates/events_app/inbox.html",
        "events_app/templates/events_app/includes/inbox_widget.html",
        "events_app/static/events_app/humaninput-inbox.js",
        "events_app/static/events_app/humaninput-inbox.css",
        "events_app/client.py",
    ]:
        assert expected in names, expected
    assert not any(name.startswith(("tests/", "humaninput_project/")) for name in names)
