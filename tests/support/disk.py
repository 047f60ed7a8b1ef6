"""A small disk for tests that fill it: a tmpfs mounted for the test (CI runs as root)."""

from __future__ import annotations

import contextlib
import gc
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.rawhttp import wait_for


@contextlib.contextmanager
def small_tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. "24m") mounted on ``mount_point`` (created) for the block.

    Fails, never skips, when it cannot mount: CI runs as root, and a skip would hide the test.
    """
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.fail(
            "this test mounts a small tmpfs (the only honest way to fill a disk) and needs root "
            f"(CI runs as root): mount failed: {result.stderr.strip()}"
        )
    try:
        yield mount_point
    finally:
        unmount(mount_point)


def unmount(mount_point: Path) -> None:
    """Unmount ``mount_point``, polling until it is no longer busy."""
    # A server's codec workers exit just after the server, and a sqlite3 connection left to the
    # garbage collector keeps its file open: the mount is busy until they are gone.
    gc.collect()
    errors: list[str] = []

    def unmounted() -> bool:
        result = subprocess.run(["umount", str(mount_point)], capture_output=True, text=True)
        errors.append(result.stderr.strip())
        return result.returncode == 0

    try:
        wait_for(f"{mount_point} to be unmounted", unmounted, timeout=30, interval=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {errors[-1]}") from None
