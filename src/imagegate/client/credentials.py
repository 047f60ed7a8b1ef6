"""Where ``imagegate login`` keeps the server's URL and the session (or an API key):
``$XDG_CONFIG_HOME/imagegate/credentials.json`` (default ``~/.config/imagegate/``), mode 0600 in
a 0700 folder. Every write goes to a new file created 0600 with O_EXCL under a 0077 umask, then
renamed over the old one, so the file is never readable by others, not even for a moment, and
never half-written. Processes that renew the session hold ``credentials.lock`` (flock), so two
commands at once do not both spend the same refresh token (the server would take the second use
for a stolen token and end the session)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FILE_NAME = "credentials.json"


def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/imagegate``, or ``~/.config/imagegate``."""
    base = os.environ.get("XDG_CONFIG_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".config"
    return root / "imagegate"


def credentials_path() -> Path:
    """The credentials file."""
    return config_dir() / FILE_NAME


def _ensure_dir(folder: Path) -> None:
    old = os.umask(0o077)
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    finally:
        os.umask(old)


def load() -> dict[str, Any] | None:
    """The stored credentials, or None when there are none (or they are unreadable)."""
    try:
        data = json.loads(credentials_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def save(data: dict[str, Any]) -> Path:
    """Replace the stored credentials, atomically; the file is 0600 from its creation."""
    path = credentials_path()
    _ensure_dir(path.parent)
    tmp = path.with_name(f".{FILE_NAME}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    old = os.umask(0o077)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    finally:
        os.umask(old)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def delete() -> bool:
    """Forget the stored credentials; False when there were none."""
    try:
        credentials_path().unlink()
    except FileNotFoundError:
        return False
    return True


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """Hold the credentials lock (other ``imagegate`` processes wait)."""
    path = config_dir() / "credentials.lock"
    _ensure_dir(path.parent)
    old = os.umask(0o077)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    finally:
        os.umask(old)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
