"""Start-up rows for bench/run (issue 13, part 2 item 5): how long the ``imagegate`` command
takes to answer, next to the interpreter's own start (``python -c pass``), and how long
``imagegate serve`` takes to answer ``GET /status``, next to a bare FastAPI app served by
uvicorn (bench/bare_app.py) reaching its first answer.

Goals: ``imagegate --help`` and a client command (``imagegate whoami`` against a running
embedded server, logged in as its demo account) within 0.3 s; ``imagegate serve`` answering
``/status`` within 3 s. Each round runs every command once, in turn (on a shared machine a
block of one command then a block of the other mostly measures the load changing); the rows are
the medians. Every command is the installed console script, ``.venv/bin/imagegate``, as people
run it.

``serve`` is timed from the process's start to its first 200 (polled every 10 ms): a restart
on a data dir that is up to date (the usual start), a first start on an empty data dir
(migrations, a signing key), and the restart's readiness (``/healthz``: the codec workers have
started too). Each server is stopped (SIGTERM) before the next command runs.

Nothing here imports bench.py (which runs as ``__main__``): bench.py passes its ``Bench``.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
IMAGEGATE = str(Path(PY).with_name("imagegate"))  # the console script beside the interpreter
DEMO = ("bob", "qwe123")
POLL_SECONDS = 0.01
START_TIMEOUT = 120.0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers_200(port: int, path: str) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def run_seconds(cmd: list[str], env: dict[str, str] | None = None, stdin: str = "") -> float:
    """Wall time of one run of ``cmd`` to its exit (which must be 0)."""
    start = time.perf_counter()
    done = subprocess.run(
        cmd, input=stdin, capture_output=True, text=True, env=env, timeout=120, check=False
    )
    took = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: exit {done.returncode}: {done.stderr[-2000:]}")
    return took


def first_200(
    cmd: list[str], port: int, paths: tuple[str, ...], env: dict[str, str], log: Path
) -> dict[str, float]:
    """Start ``cmd``, time its first 200 on each of ``paths`` (from the process's start), stop it
    (SIGTERM, then wait)."""
    got: dict[str, float] = {}
    with open(log, "ab") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            while len(got) < len(paths):
                now = time.perf_counter() - start
                if now > START_TIMEOUT:
                    raise RuntimeError(f"{cmd[0]}: no 200 within {START_TIMEOUT:g} s (see {log})")
                if proc.poll() is not None:
                    raise RuntimeError(f"{cmd[0]} exited with {proc.returncode} (see {log})")
                for path in paths:
                    if path not in got and _answers_200(port, path):
                        got[path] = time.perf_counter() - start
                time.sleep(POLL_SECONDS)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    return got


def _serve_cmd(data_dir: Path, port: int) -> list[str]:
    return [IMAGEGATE, "serve", "--port", str(port), "--data-dir", str(data_dir), "--demo"]


def startup_rows(b: Any) -> None:
    """The start-up rows, into ``b`` (bench.py's Bench): rounds alternate every command."""
    rounds = 1 if b.quick else 5  # --quick: a smoke test (bench.py keeps it under 4 minutes)
    work: Path = b.work / "startup"
    work.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "IMAGEGATE_LOG_LEVEL": "warning",
        "XDG_CONFIG_HOME": str(work / "config"),  # the client's stored session: ours only
    }
    env.pop("IMAGEGATE_URL", None)
    env.pop("IMAGEGATE_API_KEY", None)

    # A server for the client command: started once, the demo account logged in once.
    client_port = _free_port()
    client_dir = work / "client-server" / "data"
    server = subprocess.Popen(
        _serve_cmd(client_dir, client_port),
        stdout=open(work / "client-server.log", "ab"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
        env=env,
    )
    restart_dir = work / "restart" / "data"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers_200(client_port, "/healthz"):
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"the client's server did not start (see {work})")
            time.sleep(0.05)
        url = f"http://127.0.0.1:{client_port}"
        run_seconds([IMAGEGATE, "login", url, "--user", DEMO[0]], env, stdin=DEMO[1] + "\n")
        # The restart rounds' data dir: made (migrated, keyed) once, before the clock.
        port = _free_port()
        first_200(_serve_cmd(restart_dir, port), port, ("/status",), env, work / "serve.log")

        commands: dict[str, Callable[[], float]] = {
            "python -c pass": lambda: run_seconds([PY, "-c", "pass"], env),
            "imagegate --help": lambda: run_seconds([IMAGEGATE, "--help"], env),
            "imagegate whoami": lambda: run_seconds([IMAGEGATE, "whoami"], env),
        }
        samples: dict[str, list[float]] = {k: [] for k in commands}
        for key in ("bare", "restart", "ready", "first"):
            samples[key] = []
        for number in range(rounds):
            for key, command in commands.items():
                samples[key].append(command())
            port = _free_port()
            bare = [PY, str(ROOT / "bench" / "bare_app.py"), str(port)]
            samples["bare"].append(
                first_200(bare, port, ("/ping",), env, work / "bare.log")["/ping"]
            )
            port = _free_port()
            got = first_200(
                _serve_cmd(restart_dir, port),
                port,
                ("/status", "/healthz"),
                env,
                work / "serve.log",
            )
            samples["restart"].append(got["/status"])
            samples["ready"].append(got["/healthz"])
            fresh = work / f"first-{number}" / "data"
            port = _free_port()
            got = first_200(_serve_cmd(fresh, port), port, ("/status",), env, work / "serve.log")
            samples["first"].append(got["/status"])
            shutil.rmtree(fresh.parent, ignore_errors=True)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()

    med = {k: statistics.median(v) for k, v in samples.items()}
    shown = ", ".join(f"{k} {[round(x, 3) for x in v]}" for k, v in samples.items())
    print(f"startup rounds (s): {shown}", flush=True)
    b.add("python -c pass", "baseline", "seconds", med["python -c pass"])
    for key in ("imagegate --help", "imagegate whoami"):
        b.add(key, "embedded", "seconds", med[key], med["python -c pass"])
    b.add("bare FastAPI app: first 200", "baseline", "seconds", med["bare"])
    b.add(
        "imagegate serve: /status 200 (restart)", "embedded", "seconds", med["restart"], med["bare"]
    )
    b.add(
        "imagegate serve: /healthz 200 (restart)", "embedded", "seconds", med["ready"], med["bare"]
    )
    b.add(
        "imagegate serve: /status 200 (empty data dir)",
        "embedded",
        "seconds",
        med["first"],
        med["bare"],
    )
