"""The README's first command: the quickstart proves its memory is used (slow tier: ~1-2 min)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO


@pytest.mark.slow
def test_the_quickstart_recalls_what_only_its_carried_memory_holds(tmp_path):
    out = tmp_path / "quickstart"
    command = [
        sys.executable,
        "-m",
        "miraslab",
        "train",
        str(REPO / "recipes" / "quickstart.toml"),
        "--out",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env={**os.environ})
    assert result.returncode == 0, result.stderr[-2000:]
    use = json.loads((out / "summary.json").read_text())["memory_use"]
    # the README's targets are 99 % and a 90-point drop; a test on any CPU allows some slack
    assert use["val_accuracy"] >= 0.95 and use["memory_use/reset_accuracy"] <= 0.05, use
    assert "the memory is used at step 1000" in result.stdout + result.stderr
    assert (out / "memory_use.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
