"""The ``imagegate`` command, run as a child process the way a person or a script runs it."""

from __future__ import annotations

import os
import subprocess
import sys


def imagegate(
    *args: str, stdin: str = "", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``imagegate ARGS`` with ``stdin`` as its input and ``env`` added to the environment."""
    return subprocess.run(
        [sys.executable, "-m", "imagegate", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
