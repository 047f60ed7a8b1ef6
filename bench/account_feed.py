"""The account feed's gain on the stack (issue 11, item 9): token validation straight to a
security replica and ``GET /v1/user`` through the gateway, with the security replicas checking
accounts in the database (``IMAGEGATE_ACCOUNT_FEED=false``: the code before the feed) and in
memory (the default), in alternating rounds (the replicas are restarted between them).

Usage (the stack must be up: deploy/local/stack up): .venv/bin/python bench/account_feed.py
[--quick] [--rounds N] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import Bench, Load, accounts, stack_module

SECURITY = ("security-1", "security-2")


def restart_security(feed: bool) -> None:
    """Restart both security replicas with the feed on or off (waits for their health)."""
    stack = [sys.executable, str(Path(__file__).resolve().parents[1] / "deploy/local/stack.py")]
    env = {**os.environ, "IMAGEGATE_ACCOUNT_FEED": "true" if feed else "false"}
    for name in SECURITY:
        for action in ("stop", "start"):
            done = subprocess.run(
                [*stack, action, name], env=env, capture_output=True, text=True, timeout=300
            )
            assert done.returncode == 0, done.stderr[-2000:]


def wait_fresh(urls: list[str], timeout: float = 60) -> None:
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
            assert time.monotonic() < deadline, f"{url}: the feed did not catch up"
            time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    stack = stack_module()
    api = f"http://127.0.0.1:{stack.PLAIN_PORT}"
    replicas = [f"http://127.0.0.1:{p}" for p in stack.SECURITY_PORTS]
    with tempfile.TemporaryDirectory(prefix="imagegate-feed-bench-") as tmp:
        b = Bench(args.quick, Path(tmp))
        with httpx.Client(base_url=api, timeout=60) as c:
            tokens = [token for _, token in accounts(c, 8)]
        seconds = b.duration
        runs: dict[str, dict[str, list[Load]]] = {
            "database": {"validation": [], "me": []},
            "feed": {"validation": [], "me": []},
        }
        for _ in range(1 if args.quick else args.rounds):
            for mode in ("database", "feed"):
                restart_security(mode == "feed")
                if mode == "feed":
                    wait_fresh(replicas)
                got = runs[mode]
                got["validation"].append(
                    b.wrk(f"{replicas[0]}/v1/token/validation", tokens=tokens, duration=seconds)
                )
                got["me"].append(b.wrk(f"{api}/v1/user", tokens=tokens, duration=seconds))
        restart_security(True)
        for kind, label in (
            ("validation", "token validation (direct)"),
            ("me", "GET /v1/user (authenticated)"),
        ):
            before = Load.combine(runs["database"][kind])
            after = Load.combine(runs["feed"][kind])
            b.add(f"{label}: database", "stack", "req/s", before.rps, load=before)
            b.add(f"{label}: account feed", "stack", "req/s", after.rps, before.rps, load=after)
            b.add(f"{label}: database", "stack", "p99 ms", before.p99_ms, load=before)
            b.add(f"{label}: account feed", "stack", "p99 ms", after.p99_ms, load=after)
            spread = {m: [round(x.rps) for x in runs[m][kind]] for m in runs}
            print(f"  rounds {kind}: {spread}", flush=True)
            p50 = {m: statistics.median(x.p50_ms for x in runs[m][kind]) for m in runs}
            print(f"  median p50 ms {kind}: {p50}", flush=True)
        if args.json:
            args.json.write_text(json.dumps([asdict(r) for r in b.rows], indent=1) + "\n")


if __name__ == "__main__":
    main()
