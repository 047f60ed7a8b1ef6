"""The client commands of ``imagegate`` (login, logout, whoami, push, ls, pull, rm, keys
create/list/revoke), on ``imagegate.client.Client``. ``imagegate.cli`` parses the arguments and
imports this module only for these commands; rich is imported only to draw a terminal's
progress bars."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import getpass
import hashlib
import json
import os
import queue
import secrets
import signal
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from imagegate.client import credentials
from imagegate.client._core import ApiError, ClientError, TransportError, base_url
from imagegate.client._models import Image, Tokens
from imagegate.client._sync import Client

EXIT_FAILED, EXIT_INTERRUPTED, EXIT_BROKEN_PIPE = 1, 130, 141


class Fatal(Exception):
    """A command cannot go on: its message is printed as ``error: …`` and it exits 1."""


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"  # pragma: no cover


# -- credentials -----------------------------------------------------------------------------


def _tokens_of(stored: dict[str, Any]) -> Tokens | None:
    access = stored.get("access_token")
    if not isinstance(access, str):
        return None
    refresh = stored.get("refresh_token")
    expires = stored.get("expires_at")
    return Tokens(
        access,
        refresh if isinstance(refresh, str) else None,
        float(expires) if isinstance(expires, int | float) else None,
    )


def _save_session(url: str, login: str | None, tokens: Tokens) -> None:
    credentials.save(
        {
            "url": url,
            "login": login,
            "access_token": tokens.access_token,
            "refresh_token": tokens.refresh_token,
            "expires_at": tokens.expires_at,
        }
    )


class StoredSession(Client):
    """A client whose session lives in the credentials file: every renewal is saved, under the
    file's lock, and a renewal another ``imagegate`` process made meanwhile is taken over
    instead of spending the same refresh token twice (which the server takes for a theft)."""

    def __init__(self, url: str, stored: dict[str, Any]) -> None:
        super().__init__(url, tokens=_tokens_of(stored), verify=_verify())
        self.login_name = stored.get("login") if isinstance(stored.get("login"), str) else None

    def refresh(self) -> Tokens:
        with self._lock, credentials.locked():
            stored = credentials.load() or {}
            theirs = _tokens_of(stored)
            mine = self.tokens
            if (
                theirs is not None
                and mine is not None
                and stored.get("url") == self.url
                and theirs.refresh_token
                and theirs.refresh_token != mine.refresh_token
            ):
                self._tokens = theirs
                return theirs
            with _interrupt_deferred():
                tokens = super().refresh()
                _save_session(self.url, self.login_name, tokens)
            return tokens


@contextlib.contextmanager
def _interrupt_deferred() -> Iterator[None]:
    """Ctrl-C waits for the end of the block: between the server rotating the refresh token
    and the file saving the new one, an exit would keep a spent token (the next command would
    present it again, and the server would end the session as stolen)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only; push's Ctrl-C waits for this lock instead
        return
    pending: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda number, _: pending.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if pending:
            raise KeyboardInterrupt


def _verify() -> bool | ssl.SSLContext:
    """IMAGEGATE_CA_FILE: trust this CA (a self-signed server); else the usual ones."""
    ca = os.environ.get("IMAGEGATE_CA_FILE", "").strip()
    if not ca:
        return True
    try:
        return ssl.create_default_context(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise Fatal(f"IMAGEGATE_CA_FILE: {exc}") from None


def _connect() -> Client:
    """A client for the configured server: IMAGEGATE_URL/IMAGEGATE_API_KEY, else the stored
    credentials."""
    env_url = os.environ.get("IMAGEGATE_URL", "").strip()
    env_key = os.environ.get("IMAGEGATE_API_KEY", "").strip()
    stored = credentials.load()
    if env_key:
        url = env_url or (stored or {}).get("url")
        if not isinstance(url, str) or not url:
            raise Fatal("IMAGEGATE_API_KEY is set but not IMAGEGATE_URL")
        return Client(url, api_key=env_key, verify=_verify())
    if stored is None or not isinstance(stored.get("url"), str):
        raise Fatal(
            "not logged in: run 'imagegate login URL' (or set IMAGEGATE_URL and IMAGEGATE_API_KEY)"
        )
    url = stored["url"]
    if env_url and base_url(env_url) != url:
        raise Fatal(
            f"logged in to {url}, not to IMAGEGATE_URL={env_url}: log in there, or set "
            "IMAGEGATE_API_KEY"
        )
    key = stored.get("api_key")
    if isinstance(key, str) and key:
        return Client(url, api_key=key, verify=_verify())
    if _tokens_of(stored) is None:
        raise Fatal("the stored credentials are incomplete: run 'imagegate login URL' again")
    return StoredSession(url, stored)


def _ask(prompt: str, *, secret: bool) -> str:
    """A terminal prompt (hidden for a secret); otherwise the next line of standard input."""
    if sys.stdin.isatty():
        return getpass.getpass(prompt) if secret else input(prompt)
    line = sys.stdin.readline()
    if not line:
        raise Fatal(f"no {prompt.rstrip(': ').lower()} on standard input")
    return line.rstrip("\r\n")


def _login(args: argparse.Namespace) -> int:
    url = base_url(args.url)
    if args.api_key:
        key = os.environ.get("IMAGEGATE_API_KEY", "").strip() or _ask("API key: ", secret=True)
        with Client(url, api_key=key.strip(), verify=_verify()) as client:
            try:
                client.images(limit=1)
            except ApiError as exc:
                if exc.status != 403:  # 403: a key without images:read is still a key
                    raise Fatal(
                        f"the server refused the key ({exc.status}: {exc.message})"
                    ) from None
        credentials.save({"url": url, "api_key": key.strip()})
        print(f"logged in to {url} with an API key", file=sys.stderr)
        return 0
    login = args.user or _ask("Login: ", secret=False)
    password = _ask("Password: ", secret=True)
    with Client(url, verify=_verify()) as client:
        tokens = client.login(login.strip(), password)
        user = client.whoami()
    with credentials.locked():
        _save_session(url, user.login, tokens)
    note = (
        ""
        if tokens.refresh_token
        else " (this server gives no refresh token: log in again when the session expires)"
    )
    print(f"logged in to {url} as {user.login}{note}", file=sys.stderr)
    return 0


def _logout(args: argparse.Namespace) -> int:
    if os.environ.get("IMAGEGATE_API_KEY", "").strip():
        print("nothing stored to forget: IMAGEGATE_API_KEY is set; unset it", file=sys.stderr)
    stored = credentials.load()
    if stored is None:
        print("not logged in", file=sys.stderr)
        return 0
    if _tokens_of(stored) is not None and isinstance(stored.get("url"), str):
        with StoredSession(stored["url"], stored) as client:
            try:
                client.logout(everywhere=args.all)
            except ApiError as exc:
                if exc.status == 404:
                    print(
                        "warning: the server has no logout; its access token stays valid until "
                        "it expires",
                        file=sys.stderr,
                    )
                elif exc.status != 401:  # 401: the session had already ended
                    raise
            except TransportError as exc:
                print(f"warning: the server was not told ({exc})", file=sys.stderr)
        credentials.delete()
        print(f"logged out of {stored['url']}", file=sys.stderr)
        return 0
    credentials.delete()
    print(
        f"forgot the API key for {stored.get('url')} (it still works: 'imagegate keys revoke')",
        file=sys.stderr,
    )
    return 0


def _whoami(args: argparse.Namespace) -> int:
    with _connect() as client:
        user = client.whoami()
        how = "session" if client.tokens is not None else "api-key"
        if args.json:
            print(json.dumps({**dataclasses.asdict(user), "url": client.url, "auth": how}))
        else:
            print(
                f"{user.login} at {client.url} ({'API key' if how == 'api-key' else 'logged in'}"
                f"): {_count(user.images, 'image')}, {_size(user.bytes)}"
            )
    return 0


# -- push ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """A file to send."""

    path: Path
    shown: str
    size: int


@dataclass
class Outcome:
    """What became of a file: ``stored`` (201), ``exists`` (200: the server already had the
    same bytes from this account), ``failed`` (with the server's reason), ``skipped`` (not
    sent: the run stopped first) or ``interrupted``."""

    item: Item
    status: str
    image: Image | None = None
    http_status: int | None = None
    error: str | None = None


def _collect(paths: list[str]) -> tuple[list[Item], list[Outcome]]:
    """The files named and those in the folders named (sorted, dot-names skipped, no
    repeats), and an outcome for each name that does not exist."""
    items: list[Item] = []
    missing: list[Outcome] = []
    seen: set[str] = set()

    def add(path: Path) -> None:
        real = os.path.realpath(path)
        if real in seen:
            return
        seen.add(real)
        info = path.stat()
        items.append(Item(path, str(path), info.st_size if path.is_file() else 0))

    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    file = Path(root, name)
                    # Sockets, pipes and broken links in a folder are not images to send.
                    if not name.startswith(".") and file.is_file():
                        add(file)
        elif path.exists():
            add(path)
        else:
            missing.append(Outcome(Item(path, arg, 0), "failed", error="no such file or folder"))
    return items, missing


class View(Protocol):
    """How a push shows itself."""

    def start(self, item: Item) -> None: ...
    def progress(self, item: Item, sent: int) -> None: ...
    def done(self, outcome: Outcome) -> None: ...
    def close(self) -> None: ...


def _record(outcome: Outcome, client: Client) -> dict[str, Any]:
    image = outcome.image
    return {
        "type": "file",
        "file": outcome.item.shown,
        "status": outcome.status,
        "url": client.absolute(image.url) if image else None,
        "filename": image.filename if image else None,
        "bytes": outcome.item.size,
        "http_status": outcome.http_status,
        "error": outcome.error,
    }


class JsonLines:
    """Not a terminal, or --json: one JSON object a line, per file, as each ends."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def start(self, item: Item) -> None:
        pass

    def progress(self, item: Item, sent: int) -> None:
        pass

    def done(self, outcome: Outcome) -> None:
        print(json.dumps(_record(outcome, self.client)), flush=True)

    def close(self) -> None:
        pass


class Bars:
    """A terminal: a bar per file being sent and one for the run (rich)."""

    def __init__(self, client: Client, items: list[Item]) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.client = client
        self.progress_bars = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
        self.files, self.ended = len(items), 0
        self.finished_bytes = 0
        self.partial: dict[Item, int] = {}
        self.tasks: dict[Item, Any] = {}
        self.lock = threading.Lock()
        self.total = self.progress_bars.add_task(
            self._overall(), total=sum(i.size for i in items) or None
        )
        self.progress_bars.start()

    def _overall(self) -> str:
        return f"[bold]{self.ended}/{self.files} files"

    def start(self, item: Item) -> None:
        name = item.shown if len(item.shown) <= 30 else "…" + item.shown[-29:]
        self.tasks[item] = self.progress_bars.add_task(name, total=item.size or None)

    def progress(self, item: Item, sent: int) -> None:
        with self.lock:
            self.partial[item] = sent
            overall = self.finished_bytes + sum(self.partial.values())
        task = self.tasks.get(item)
        if task is not None:
            self.progress_bars.update(task, completed=sent)
        self.progress_bars.update(self.total, completed=overall)

    def done(self, outcome: Outcome) -> None:
        item = outcome.item
        with self.lock:
            self.partial.pop(item, None)
            self.finished_bytes += item.size
            self.ended += 1
            overall = self.finished_bytes + sum(self.partial.values())
        task = self.tasks.pop(item, None)
        if task is not None:
            self.progress_bars.remove_task(task)
        self.progress_bars.update(self.total, completed=overall, description=self._overall())
        self.progress_bars.console.print(
            _human(outcome, self.client), highlight=False, markup=False
        )

    def close(self) -> None:
        self.progress_bars.stop()


def _human(outcome: Outcome, client: Client) -> str:
    if outcome.image is not None:
        url = client.absolute(outcome.image.url)
        return f"{outcome.status:<7} {outcome.item.shown} → {url}"
    status = f"{outcome.http_status}: " if outcome.http_status else ""
    return f"{outcome.status:<7} {outcome.item.shown}: {status}{outcome.error}"


def _already_uploaded(client: Client, path: Path) -> Image | None:
    """The caller's image with this file's bytes, asked by their sha256 before sending them
    (an interrupted push run again sends only what is missing). A key without images:read
    cannot ask: the upload itself then answers "exists" for a file sent before."""
    if not path.is_file():  # a pipe: read once, while it is sent
        return None
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    try:
        return client.find_upload(digest.hexdigest())
    except ApiError as exc:
        if exc.status == 403:
            return None
        raise


class _Stopped(Exception):
    """Raised inside an upload's body to abandon it when the run stops."""


def _push(args: argparse.Namespace) -> int:
    if args.jobs < 1:
        raise Fatal("--jobs must be 1 or more")
    items, outcomes = _collect(args.paths)
    files = len(items) + len(outcomes)  # the names that do not exist count as failed files
    client = _connect()
    terminal = sys.stdout.isatty() and not args.json
    view: View = Bars(client, items) if terminal else JsonLines(client)
    for outcome in outcomes:
        view.done(outcome)
    visibility = "private" if args.private else "public"
    work: queue.SimpleQueue[Item] = queue.SimpleQueue()
    for item in items:
        work.put(item)
    events: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
    stop = threading.Event()  # Ctrl-C: uploads in progress are abandoned too
    halt = threading.Event()  # the credentials were refused: no new uploads start

    def send(item: Item) -> Outcome:
        def progress(sent: int) -> None:
            if stop.is_set():
                raise _Stopped
            view.progress(item, sent)

        try:
            before = _already_uploaded(client, item.path)
            if before is not None:  # sent by an earlier run: not sent again
                return Outcome(item, "exists", before, 200)
            up = client.upload(item.path, visibility=visibility, progress=progress)
        except _Stopped:
            return Outcome(item, "interrupted", error="interrupted")
        except ApiError as exc:
            if exc.status in (401, 403):
                halt.set()  # no more files: each would be refused the same way
                events.put(("fatal", exc))
            return Outcome(item, "failed", http_status=exc.status, error=exc.message)
        except (ClientError, OSError) as exc:
            return Outcome(item, "failed", error=str(exc))
        return Outcome(
            item, "stored" if up.created else "exists", up.image, 201 if up.created else 200
        )

    def worker() -> None:
        while not stop.is_set() and not halt.is_set():
            try:
                item = work.get_nowait()
            except queue.Empty:
                return
            events.put(("start", item))
            view.start(item)  # here, so that its bar exists before the first progress call
            events.put(("done", send(item)))

    started = time.monotonic()
    threads = [
        threading.Thread(target=worker, name=f"push-{n}", daemon=True)
        for n in range(min(args.jobs, max(1, len(items))))
    ]
    interrupted, fatal = False, None
    in_flight: set[Item] = set()
    try:
        for thread in threads:
            thread.start()
        while True:
            # Whether the workers are done is read before the queue, so that the events a
            # worker put just before it ended are still taken.
            running = any(t.is_alive() for t in threads)
            try:
                kind, value = events.get(timeout=0.1) if running else events.get_nowait()
            except queue.Empty:
                if not running:
                    break
                continue
            if kind == "start":
                in_flight.add(value)
            elif kind == "done":
                in_flight.discard(value.item)
                outcomes.append(value)
                view.done(value)
            elif fatal is None:
                fatal = value
    except KeyboardInterrupt:
        interrupted = True
        stop.set()
        # An upload thread renewing the session finishes saving it first (see StoredSession);
        # holding the lock from here, no other starts one before the exit.
        client._lock.acquire(timeout=10)
    finally:
        view.close()
    if not interrupted:  # otherwise uploads may still be using it: the exit closes them
        client.close()
    done = {o.item for o in outcomes}
    not_sent = [i for i in items if i not in done and i not in in_flight]
    if fatal is not None:
        for item in not_sent:
            outcome = Outcome(item, "skipped", error=f"not sent: {fatal.message}")
            outcomes.append(outcome)
            view.done(outcome)
    summary = _summary(outcomes, files, interrupted)
    summary["interrupted_files"] = len(in_flight) if interrupted else 0
    summary["not_sent"] = len(not_sent) if interrupted else summary["not_sent"]
    if not terminal:
        print(json.dumps({"type": "summary", **summary}), flush=True)
    print(_summary_line(summary, time.monotonic() - started, fatal), file=sys.stderr, flush=True)
    if interrupted:
        return EXIT_INTERRUPTED
    return EXIT_FAILED if summary["failed"] or summary["not_sent"] else 0


def _summary(outcomes: list[Outcome], files: int, interrupted: bool) -> dict[str, Any]:
    by: dict[str, int] = {}
    for outcome in outcomes:
        by[outcome.status] = by.get(outcome.status, 0) + 1
    return {
        "files": files,
        "stored": by.get("stored", 0),
        "exists": by.get("exists", 0),
        "failed": by.get("failed", 0),
        "not_sent": by.get("skipped", 0),
        "interrupted": interrupted,
        "bytes": sum(o.item.size for o in outcomes if o.status in ("stored", "exists")),
    }


def _summary_line(summary: dict[str, Any], seconds: float, fatal: ApiError | None) -> str:
    parts = [f"{summary['stored']} stored", f"{summary['exists']} already there"]
    parts.append(f"{summary['failed']} failed")
    if summary["not_sent"]:
        parts.append(f"{summary['not_sent']} not sent")
    if summary.get("interrupted_files"):
        parts.append(f"{summary['interrupted_files']} cut short")
    head = "interrupted" if summary["interrupted"] else "done"
    line = (
        f"{head}: {', '.join(parts)} of {_count(summary['files'], 'file')} "
        f"({_size(summary['bytes'])} in {seconds:.1f} s)"
    )
    if fatal is not None:
        line += f"\nerror: the server refused this account ({fatal.status}: {fatal.message})"
    if summary["interrupted"]:
        line += "\nrun the same command again to send the rest (what is there is not stored twice)"
    return line


# -- ls, pull, rm ----------------------------------------------------------------------------


def _ls(args: argparse.Namespace) -> int:
    with _connect() as client:
        for image in client.iter_images():
            url = client.absolute(image.url)
            if args.json:
                print(json.dumps({**dataclasses.asdict(image), "url": url}))
            else:
                print(
                    f"{image.filename}\t{image.visibility}\t{image.width}x{image.height}\t"
                    f"{image.bytes}\t{image.created_at}\t{url}"
                )
    return 0


@contextlib.contextmanager
def _new_file(target: Path) -> Iterator[Any]:
    """A temporary file next to ``target``, renamed over it on success, removed otherwise."""
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _pull(args: argparse.Namespace) -> int:
    with _connect() as client:
        if args.output == "-":
            client.download_to(args.name, sys.stdout.buffer)
            sys.stdout.buffer.flush()
            return 0
        target = Path(args.output or args.name)
        if target.is_dir():
            target /= args.name
        with _new_file(target) as out:
            client.download_to(args.name, out)
        print(target)
    return 0


def _rm(args: argparse.Namespace) -> int:
    failed = 0
    with _connect() as client:
        for name in args.names:
            try:
                client.delete(name)
            except ApiError as exc:
                if exc.status in (401, 403):
                    raise
                failed += 1
                print(f"error: {name}: {exc.message}", file=sys.stderr)
                continue
            except ClientError as exc:
                failed += 1
                print(f"error: {exc}", file=sys.stderr)
                continue
            print(f"deleted {name}")
    return EXIT_FAILED if failed else 0


# -- API keys --------------------------------------------------------------------------------


def _keys(args: argparse.Namespace) -> int:
    with _connect() as client:
        if args.keys_command == "create":
            scopes = args.scope or ["images:read", "images:write"]
            key = client.create_key(args.name, scopes, expires_in_days=args.expires_in_days)
            if args.json:
                print(json.dumps(dataclasses.asdict(key)))
            else:
                print(key.key)
                print(
                    f"API key {key.name!r} ({key.id}; {', '.join(key.scopes)}; expires "
                    f"{key.expires_at or 'never'}): shown only now, keep it",
                    file=sys.stderr,
                )
        elif args.keys_command == "list":
            for k in client.list_keys():
                if args.json:
                    print(json.dumps(dataclasses.asdict(k)))
                else:
                    print(
                        f"{k.id}\t{k.name}\t{k.prefix}\t{','.join(k.scopes)}\t{k.created_at}\t"
                        f"{k.last_used_at or '-'}\t{k.expires_at or 'never'}"
                    )
        else:
            for key_id in args.ids:
                client.revoke_key(key_id)
                print(f"revoked {key_id}")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "login": _login,
    "logout": _logout,
    "whoami": _whoami,
    "push": _push,
    "ls": _ls,
    "pull": _pull,
    "rm": _rm,
    "keys": _keys,
}


def run(args: argparse.Namespace) -> int:
    """Run a parsed client command; its exit status. Errors are one line on stderr."""
    try:
        return COMMANDS[args.command](args)
    except Fatal as exc:
        print(f"error: {exc}", file=sys.stderr)
    except ApiError as exc:
        hint = ""
        if exc.status == 401:
            hint = " (run 'imagegate login URL' again)"
        print(f"error: {exc.status}: {exc.message}{hint}", file=sys.stderr)
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
    except BrokenPipeError:
        # The reader went away (``imagegate ls | head``): stop quietly, as a pipe's writer
        # does; stdout is pointed at /dev/null so that the exit's flush does not complain.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as exc:
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_FAILED
