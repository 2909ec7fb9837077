"""A save stopped mid-write, for the tests that SIGKILL it there.

``PAUSE_HOOK`` is Python source a test's subprocess runs before it saves: it defines
``pause_at(wanted)``, which installs ``miraslab.train.checkpoint.fault_hook`` so the save
stops for 60 s after the file ``wanted`` names (or ``"renamed"``, after the rename),
optionally only at one step (``"model.safetensors@12"``), saying
``checkpoint paused after <file>`` on stderr: the moment the test kills it.
"""

from __future__ import annotations

import sys

PAUSE_HOOK = """
import sys, time
from miraslab.train import checkpoint


def pause_at(wanted):
    def pause(stage, step):
        if wanted in (stage, f"{stage}@{step}"):
            print(f"checkpoint paused after {stage}", file=sys.stderr, flush=True)
            time.sleep(60)

    checkpoint.fault_hook = pause
"""


def paused_command(wanted: str, *args: str) -> list[str]:
    """``python -m miraslab ARGS`` whose checkpoint saves pause at ``wanted``."""
    code = (
        f"{PAUSE_HOOK}\npause_at({wanted!r})\nfrom miraslab.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    )
    return [sys.executable, "-c", code, *args]
