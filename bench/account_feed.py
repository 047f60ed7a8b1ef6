"""The account feed's rounds for bench/run (issue 11, item 9), on the local stack: the
security replicas restarted to check accounts in the database (``IMAGEGATE_ACCOUNT_FEED=false``:
the code before the feed) or in memory (the default), in alternating rounds.

Nothing here imports bench.py (which runs as ``__main__``): it runs the rounds it is given and
returns what they measured; bench.py turns them into rows.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import httpx

STACK = [sys.executable, str(Path(__file__).resolve().parents[1] / "deploy/local/stack.py")]
SECURITY = ("security-1", "security-2")
MODES = ("database", "feed")
T = TypeVar("T")


def restart_security(feed: bool) -> None:
    """Restart both security replicas with the feed on or off (waits for their health)."""
    env = {**os.environ, "IMAGEGATE_ACCOUNT_FEED": "true" if feed else "false"}
    for name in SECURITY:
        for action in ("stop", "start"):
            done = subprocess.run(
                [*STACK, action, name], env=env, capture_output=True, text=True, timeout=300
            )
            if done.returncode != 0:
                raise RuntimeError(f"stack {action} {name}: {done.stderr[-2000:]}")


def wait_fresh(urls: Sequence[str], timeout: float = 60) -> None:
    """Until every replica's feed answers from memory (lag below the default bound)."""
    deadline = time.monotonic() + timeout
    for url in urls:
        while True:
            text = httpx.get(f"{url}/metrics", timeout=10).text
            lag = next(
                (
                    float(line.split()[-1])
                    for line in text.splitlines()
                    if line.startswith("imagegate_account_feed_lag_seconds ")
                ),
                None,
            )
            if lag is not None and lag < 0.5:
                break
            if time.monotonic() >= deadline:
                raise RuntimeError(f"{url}: the account feed did not catch up")
            time.sleep(0.2)


def alternate(rounds: int, replicas: Sequence[str], measure: Callable[[], T]) -> dict[str, list[T]]:
    """``rounds`` of ``measure`` with the replicas reading accounts from the database, then
    from the feed; the replicas are left as they ship (feed on)."""
    runs: dict[str, list[T]] = {mode: [] for mode in MODES}
    try:
        for _ in range(rounds):
            for mode in MODES:
                restart_security(mode == "feed")
                if mode == "feed":
                    wait_fresh(replicas)
                runs[mode].append(measure())
    finally:
        restart_security(True)
    return runs
