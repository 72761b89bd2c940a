"""docs/cli.md is the full command reference generated from the CLI's own --help: it must not go stale.
(That README.md has a section for every command is tested in test_cli.py.)"""

from __future__ import annotations

import difflib
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "docs" / "cli.md"
REGENERATE = "python -m typer unetcli.cli utils docs --name unetcli --output docs/cli.md"


def generate(target: Path) -> str:
    env = {**os.environ, "TERMINAL_WIDTH": "200", "COLUMNS": "200", "NO_COLOR": "1"}
    command = [sys.executable, "-m", "typer", "unetcli.cli", "utils", "docs", "--name", "unetcli", "--output", str(target)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO, env=env, check=False)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return target.read_text(encoding="utf-8")


def test_cli_reference_is_up_to_date(tmp_path):
    fresh = generate(tmp_path / "cli.md")
    current = REFERENCE.read_text(encoding="utf-8") if REFERENCE.exists() else ""
    if fresh != current:
        diff = "".join(list(difflib.unified_diff(current.splitlines(True), fresh.splitlines(True), "docs/cli.md",
                                                 "generated from --help"))[:60])
        raise AssertionError(f"docs/cli.md does not match the CLI; regenerate it (from the repository root, in the "
                             f"project's virtualenv) with:\n\n    {REGENERATE}\n\n{diff}")


def test_cli_reference_generation_does_not_depend_on_the_terminal(tmp_path, monkeypatch):
    wide = generate(tmp_path / "wide.md")
    monkeypatch.setenv("TERMINAL_WIDTH", "40")
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("FORCE_COLOR", "1")
    narrow = subprocess.run([sys.executable, "-m", "typer", "unetcli.cli", "utils", "docs", "--name", "unetcli"],
                            capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    assert narrow.returncode == 0, narrow.stderr
    assert narrow.stdout.strip() == wide.strip(), "the generated reference changes with the terminal's width or colour"
