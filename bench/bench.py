"""imagegate benchmarks: every number next to the ceiling it could reach, measured in one run.

    bench/run [--quick] [--json FILE] [--only limits|feed|events|serving|variants|startup]

Load comes from wrk (Debian's), one thread, driven by Lua scripts; its own ceiling is the NGINX
static baseline. Targets: embedded mode (`imagegate serve`) and the local production stack
(deploy/local/stack). Baselines: NGINX static files and a trivial proxied upstream, NGINX's
auth_request path to the real security service (with and without the cache) in front of that
trivial upstream, MinIO direct, a bare Pillow decode+encode loop on all cores, a bare FastAPI
endpoint served like imagegate, and Argon2 alone.

Every row from a load run records wrk's counts (requests, socket errors, answers other than
2xx/3xx); bench/validate.py fails rows whose failures exceed 1 % unless they measure refusals on
purpose (``rejections``). The connection limits' rows (``--only limits`` runs just those) compare
embedded mode before them (commit BEFORE_LIMITS, unpacked by ``git archive``) with the working
tree, in alternating rounds. The account feed's rows (``--only feed``; bench/account_feed.py)
compare the security replicas checking accounts in the database and in memory, alternating
rounds. The serving rows (``--only serving`` runs just those, no stack) compare embedded mode
serving stored 20 KB and 100 KB images with NGINX serving the same bytes from disk, alternating
rounds. The event rows (``--only events`` runs just those; bench/events.py)
time events from their commit to a webhook's arrival at 200 events/s, and one relay draining an
outbox backlog next to Kafka's own producer benchmark; every event must arrive (``lossless``:
no error budget). The variant rows (``--only variants``; bench/variants.py) compare making a
12 MP photo's variants with a bare Pillow loop, report a variant job's memory and the thumb's
bytes, uploads before and after variants, and a thumb GET (embedded, and through the gateway)
with NGINX static of the same bytes. The start-up rows (``--only startup``; bench/startup.py)
time ``imagegate --help`` and ``imagegate whoami`` next to ``python -c pass``, and
``imagegate serve`` to its first ``/status`` answer next to a bare FastAPI app's, alternating.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType

import httpx
from argon2 import PasswordHasher
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import account_feed  # noqa: E402  (bench/account_feed.py: this folder is on sys.path when run)
import events  # noqa: E402  (bench/events.py, likewise)
import startup  # noqa: E402  (bench/startup.py, likewise)
import variants  # noqa: E402  (bench/variants.py, likewise)

from imagegate.settings import Settings  # noqa: E402
from imagegate.uploader.pool import CodecPool  # noqa: E402
from tests.support.images import encode, photo  # noqa: E402
from tests.support.server import ServerProcess, free_port  # noqa: E402

CORES = os.cpu_count() or 1
PY = sys.executable


@dataclass
class Row:
    """One number. ``requests``, ``errors`` (wrk's socket errors: connect, read, write,
    timeout) and ``non2xx`` (answers other than 2xx/3xx) count the load run(s) behind it, null
    for numbers that are not from wrk; ``rejections`` marks rows that measure refusals on
    purpose, which bench/validate.py does not hold to its error budget; ``lossless`` marks rows
    whose every request must succeed (events: ``requests`` events sent, ``errors`` of them
    lost), which it fails on any error."""

    scenario: str
    target: str
    metric: str
    value: float
    baseline: float | None = None
    ratio: float | None = None
    requests: int | None = None
    errors: int | None = None
    non2xx: int | None = None
    rejections: bool = False
    lossless: bool = False


@dataclass
class Load:
    rps: float  # answers with 2xx/3xx per second
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int  # socket errors
    non2xx: int  # answers other than 2xx/3xx

    @classmethod
    def combine(cls, loads: list[Load]) -> Load:
        """Medians of the rates and latencies, sums of the counts (alternating rounds)."""
        return cls(
            statistics.median(x.rps for x in loads),
            statistics.median(x.p50_ms for x in loads),
            statistics.median(x.p99_ms for x in loads),
            sum(x.requests for x in loads),
            sum(x.errors for x in loads),
            sum(x.non2xx for x in loads),
        )

    @classmethod
    def rate(cls, value: float) -> Load:
        """A rate that is not from wrk (no requests counted)."""
        return cls(value, 0.0, 0.0, 0, 0, 0)


class Bench:
    def __init__(self, quick: bool, work: Path) -> None:
        self.quick = quick
        self.work = work
        self.duration = 3 if quick else 10
        self.rows: list[Row] = []

    def add(
        self,
        scenario: str,
        target: str,
        metric: str,
        value: float,
        baseline: float | None = None,
        *,
        load: Load | None = None,
        rejections: bool = False,
        lossless: bool = False,
    ) -> None:
        ratio = round(value / baseline, 3) if baseline else None
        row = Row(scenario, target, metric, round(value, 3), baseline and round(baseline, 3), ratio)
        if load is not None:
            row.requests, row.errors, row.non2xx = load.requests, load.errors, load.non2xx
        row.rejections, row.lossless = rejections, lossless
        self.rows.append(row)
        shown = f"  (baseline {row.baseline}, ratio {row.ratio})" if baseline else ""
        if load is not None and (load.errors or load.non2xx):
            shown += f"  [{load.errors} socket errors, {load.non2xx} non-2xx/3xx]"
        print(f"{scenario:38} {target:10} {metric:14} {row.value:>12}{shown}", flush=True)

    # --- wrk ---------------------------------------------------------------------------

    def alternating(self, *runs: Callable[[int], Load]) -> list[Load]:
        """Each run measured in turns (a, b, a, b, ...), combined (median rate, summed counts):
        on a shared machine, a ratio of two numbers taken seconds apart in one block each mostly
        measures the noise. Three rounds; one with --quick, which is a smoke test and must stay
        under 4 minutes."""
        seconds = max(2, self.duration // 2)
        samples: list[list[Load]] = [[] for _ in runs]
        for _ in range(1 if self.quick else 3):
            for run, got in zip(runs, samples, strict=True):
                got.append(run(seconds))
        return [Load.combine(got) for got in samples]

    def wrk(
        self,
        url: str,
        *,
        connections: int = 32,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        duration: float | None = None,
        tokens: list[str] | None = None,
        bodies: list[bytes] | None = None,
        unique: bool = False,
    ) -> Load:
        """One wrk run; with ``tokens`` (or ``bodies``), requests take turns among those bearer
        tokens (or request bodies): several accounts, as real traffic has, since uploads are
        shared fairly between accounts and logins are throttled per account. ``unique``: each
        request's ``body`` gets its own tail (a run id and a count), as upload rows need: the
        same bytes uploaded again by an account are answered from its first upload, unprocessed
        (issue 13's same upload twice); image formats ignore bytes after their end."""
        script = self.work / f"wrk-{time.monotonic_ns()}.lua"
        lines = [f'wrk.method = "{method}"']
        for name, value in (headers or {}).items():
            lines.append(f'wrk.headers["{name}"] = "{value}"')
        assert not (tokens and bodies), "one kind of turn-taking per run"
        if tokens:
            bearers = [f"Bearer {t}" for t in tokens]
            lines.append(_take_turns('wrk.headers["Authorization"]', bearers))
        if bodies:
            lines.append(_take_turns("wrk.body", [b.decode() for b in bodies]))
        if body is not None:
            body_file = script.with_suffix(".body")
            body_file.write_bytes(body)
            lines.append(
                f'local f = io.open("{body_file}", "rb"); wrk.body = f:read("*all"); f:close()'
            )
        if unique:
            assert body is not None, "unique needs a body"
            lines.append(
                "local base, sent, turn = wrk.body, 0, request\n"
                "request = function()\n"
                "  sent = sent + 1\n"
                f'  wrk.body = base .. "{secrets.token_hex(8)}-" .. sent\n'
                "  if turn then return turn() end\n"
                "  return wrk.format()\nend"
            )
        lines.append(
            "done = function(s, lat, req)\n"
            '  io.write(string.format("BENCHJSON %d %d %d %d %d %d\\n", s.requests, s.duration,'
            " s.errors.connect + s.errors.read + s.errors.write + s.errors.timeout,"
            " s.errors.status, lat:percentile(50), lat:percentile(99)))\nend"
        )
        script.write_text("\n".join(lines) + "\n")
        seconds = duration or self.duration
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{seconds}s",
                "--timeout",
                "30s",
                "-s",
                str(script),
                url,
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 60,
        ).stdout
        line = next(x for x in out.splitlines() if x.startswith("BENCHJSON"))
        requests, dur_us, errors, non2xx, p50, p99 = (int(v) for v in line.split()[1:])
        ok = max(0, requests - non2xx)
        return Load(ok / (dur_us / 1e6), p50 / 1000, p99 / 1000, requests, errors, non2xx)


def _take_turns(target: str, values: list[str]) -> str:
    """A wrk ``request`` function that sets ``target`` to each of ``values`` in turn."""
    quoted = ", ".join(f"[==[{v}]==]" for v in values)
    return (
        f"local values, turn = {{{quoted}}}, 0\n"
        "request = function()\n"
        "  turn = turn % #values + 1\n"
        f"  {target} = values[turn]\n"
        "  return wrk.format()\nend"
    )


# --- images ------------------------------------------------------------------------------


def noise_png(side: int) -> bytes:
    """Incompressible pixels: the stored file keeps (about) the uploaded size."""
    return encode(Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)), "PNG")


IMAGES: dict[str, bytes] = {}


def make_images() -> None:
    IMAGES["1mp"] = encode(photo(1155, 866), "JPEG", quality=92)
    IMAGES["12mp"] = encode(photo(4000, 3000), "JPEG", quality=92)
    IMAGES["20kb"] = noise_png(82)  # about 20 KB: a thumbnail
    IMAGES["100kb"] = noise_png(180)  # about 100 KB
    IMAGES["5mb"] = noise_png(1290)  # about 5 MB


# --- baselines ---------------------------------------------------------------------------


def _codec_loop(data: bytes, seconds: float) -> int:
    done, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        img = Image.open(io.BytesIO(data))
        img.load()
        img.save(io.BytesIO(), "JPEG", quality=80, progressive=True, optimize=True)
        done += 1
    return done


def codec_ceiling(data: bytes, seconds: float) -> float:
    """Decode + re-encode at imagegate's JPEG settings, one loop per core."""
    with ProcessPoolExecutor(CORES) as pool:
        list(pool.map(_codec_loop, [data] * CORES, [0.5] * CORES))  # warm the workers
        counts = list(pool.map(_codec_loop, [data] * CORES, [seconds] * CORES))
    return sum(counts) / seconds


def codec_worker_rate(src: Path, cache_mib: int, seconds: float) -> float:
    """Images/s of one production codec worker (a fresh pool) with this much block cache."""

    async def run() -> float:
        pool = CodecPool.from_settings(Settings(codec_workers=1, codec_cache_mib=cache_mib))
        try:
            await pool.warm()
            await pool.process(src, src.with_suffix(".out"))  # the first image fills the cache
            done, start = 0, time.monotonic()
            while time.monotonic() - start < seconds:
                await pool.process(src, src.with_suffix(".out"))
                done += 1
            return done / (time.monotonic() - start)
        finally:
            pool.close()

    return asyncio.run(run())


def argon2_ceiling() -> float:
    """Logins a second if every core did nothing but verify Argon2id at imagegate's settings."""
    hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
    stored = hasher.hash("benchmark password")
    times = []
    for _ in range(10):
        start = time.perf_counter()
        hasher.verify(stored, "benchmark password")
        times.append(time.perf_counter() - start)
    return CORES / statistics.median(times)


# --- process helpers ---------------------------------------------------------------------


def process_children() -> dict[int, list[int]]:
    """Every running process's children, by parent pid (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    return children


def tree_rss(pids: list[int], *, descendants: bool = True) -> int:
    """Resident bytes of these processes and (by default) all their descendants."""
    children = process_children() if descendants else {}
    total, todo = 0, list(pids)
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


@contextmanager
def peak_rss(pids: list[int], *, descendants: bool = True) -> Iterator[list[int]]:
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss(pids, descendants=descendants))
            time.sleep(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield peak
    finally:
        stop.set()
        t.join()


@contextmanager
def process(cmd: list[str], ready_url: str, **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, **kwargs
    )  # type: ignore[call-overload]
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(ready_url, timeout=1).status_code < 500:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} did not start")
            time.sleep(0.1)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def stack_module():  # type: ignore[no-untyped-def]
    from tests.stack.conftest import stack_module as load

    return load()


# The start of every NGINX config the bench writes (the baselines).
NGINX_HEAD = """
{user}
worker_processes auto;
pid {run}/nginx.pid;
error_log {run}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    sendfile on; tcp_nopush on; keepalive_timeout 65s; keepalive_requests 100000;
    client_body_temp_path {run}/body; proxy_temp_path {run}/proxy;
    fastcgi_temp_path {run}/fcgi; uwsgi_temp_path {run}/uwsgi; scgi_temp_path {run}/scgi;
    access_log {run}/access.log;
"""


BENCH_NGINX = (
    NGINX_HEAD
    + """    map $http_x_request_id $req_id {{ default $request_id; }}
    # proxy-headers.conf's scheme (the gateway's nginx.conf maps it from trusted proxies).
    map $scheme $forwarded_proto {{ default $scheme; }}
    include {conf_cache}/auth-key.conf;
    proxy_cache_path {run}/auth-cache levels=1:2 keys_zone=auth:10m inactive=60s use_temp_path=off;
    upstream security {{ {security} keepalive 32; }}
    upstream trivial {{ server 127.0.0.1:{trivial}; keepalive 32; }}
    server {{ listen 127.0.0.1:{trivial} reuseport; access_log off;
              location / {{ return 200 'ok'; }} }}
    server {{ listen 127.0.0.1:{static} reuseport; root {static_dir}; }}
    server {{
        listen 127.0.0.1:{proxy} reuseport;
        set $auth_user_id ""; set $auth_user_login "";
        location / {{ proxy_pass http://trivial; include {conf_cache}/proxy-headers.conf; }}
    }}
    {auth_servers}
}}
"""
)


AUTH_SERVER = """
    server {{
        listen 127.0.0.1:{port} reuseport;
        include {conf}/error-pages.conf; include {conf}/error-locations.conf;
        include {conf}/auth-check.conf;
        set $auth_user_id ""; set $auth_user_login "";
        location / {{ include {conf}/auth.conf; proxy_pass http://trivial;
                      include {conf}/proxy-headers.conf; }}
    }}
"""


@contextmanager
def baseline_nginx(work: Path, static_files: dict[str, bytes]) -> Iterator[dict[str, int]]:
    """NGINX with the static, trivial-proxy and auth_request-in-front-of-trivial baselines;
    the auth path includes the gateway's own auth-check.conf and auth.conf, rendered."""
    stack = stack_module()
    ports = {k: free_port() for k in ("trivial", "static", "proxy", "auth_cache", "auth_nocache")}
    run_dir, static_dir = work / "nginx-run", work / "static"
    for d in (run_dir, static_dir):
        d.mkdir(parents=True, exist_ok=True)
    for name, data in static_files.items():
        (static_dir / name).write_bytes(data)
    confs = {}
    for label, cache in (("cache", "auth"), ("nocache", "off")):
        conf = work / f"nginx-{label}"
        conf.mkdir(exist_ok=True)
        values = {"CONF_DIR": str(conf), "AUTH_CACHE": cache}
        for item in (ROOT / "deploy" / "nginx").iterdir():
            target = conf / item.name.removesuffix(".template")
            if item.name in ("auth-check.conf.template", "auth.conf.template"):
                target.write_text(stack.render(item, values))
            elif item.suffix != ".template":
                target.write_text(item.read_text())
        confs[label] = conf
    user = ""
    if os.geteuid() == 0:
        user = "user www-data;"
        shutil.chown(run_dir, "www-data")
        os.chmod(work, 0o755)  # noqa: S103 - nginx workers (www-data) read the config here
    servers = " ".join(f"server 127.0.0.1:{p};" for p in stack.SECURITY_PORTS)
    auth_servers = "".join(
        AUTH_SERVER.format(port=ports[f"auth_{label}"], conf=conf) for label, conf in confs.items()
    )
    conf_file = work / "nginx.conf"
    conf_file.write_text(
        BENCH_NGINX.format(
            user=user,
            run=run_dir,
            conf_cache=confs["cache"],
            security=servers,
            static_dir=static_dir,
            auth_servers=auth_servers,
            **ports,
        )
    )
    cmd = ["nginx", "-c", str(conf_file), "-p", str(work), "-g", "daemon off;"]
    with process(cmd, f"http://127.0.0.1:{ports['static']}/tiny.txt"):
        yield ports


# --- the scenarios -----------------------------------------------------------------------


def login(client: httpx.Client) -> str:
    r = client.post("/v1/token", json={"login": "bob", "password": "qwe123"})
    r.raise_for_status()
    return r.text


def accounts(client: httpx.Client, count: int) -> list[tuple[bytes, str]]:
    """``count`` new accounts as (credentials JSON, token): loads come from several accounts,
    because one account may hold only its fair share of the codec workers
    (IMAGEGATE_CODEC_ACCOUNT_WORKERS) and has at most 5 logins checked at once."""
    made = []
    for _ in range(count):
        creds = {"login": f"bench-{secrets.token_hex(6)}", "password": secrets.token_urlsafe(18)}
        _patient_post(client, "/v1/register", creds)
        token = _patient_post(client, "/v1/token", creds)
        made.append((json.dumps(creds).encode(), token))
    return made


def _patient_post(client: httpx.Client, path: str, body: dict[str, str]) -> str:
    """POST, waiting out the gateway's per-address rate limit (429 + Retry-After) if hit."""
    for _ in range(30):
        r = client.post(path, json=body)
        if r.status_code != 429:
            r.raise_for_status()
            return r.text
        time.sleep(float(r.headers.get("retry-after", "1")))
    raise RuntimeError(f"{path}: still rate-limited after 30 tries")


def uploaders(client: httpx.Client, count: int = CORES) -> list[str]:
    """Tokens of ``count`` new accounts to upload from (see ``accounts``)."""
    return [token for _, token in accounts(client, count)]


def upload(client: httpx.Client, token: str, data: bytes, visibility: str = "public") -> str:
    r = client.post(
        "/v1/upload",
        content=data,
        params={"visibility": visibility},
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    )
    r.raise_for_status()
    return str(r.json()["filename"])


def measure_target(
    b: Bench,
    target: str,
    api: str,
    security: str,
    uploader_pids: list[int],
    ceilings: dict[str, float],
    framework: str | None = None,
    direct: str | None = None,
) -> dict[str, str]:
    """The user-facing scenarios against one target; returns names of stored images. With
    ``framework`` (the bare endpoint's URL), GET /v1/user is measured against it in turns; with
    ``direct`` (the storage's URL of public objects), the downloads against it in turns."""
    with httpx.Client(base_url=api, timeout=60) as c:
        token = login(c)
        auth = {"Authorization": f"Bearer {token}"}
        stored = {k: upload(c, token, IMAGES[k]) for k in ("100kb", "5mb")}
        stored |= {f"own-{k}": upload(c, token, IMAGES[k], "private") for k in ("100kb", "5mb")}
        upload_tokens = uploaders(c)
        logins = [creds for creds, _ in accounts(c, 8)]

    # Eight accounts, four connections: the login throttle checks at most 5 attempts of one
    # account, and 5 from one address, at once (each reserves its place before the password is
    # checked); all of the bench comes from 127.0.0.1. Four keep both cores on Argon2.
    load = b.wrk(
        f"{security}/v1/token",
        method="POST",
        bodies=logins,
        connections=4,
        headers={"Content-Type": "application/json"},
    )
    b.add("login POST /v1/token", target, "req/s", load.rps, ceilings["argon2"], load=load)

    load = b.wrk(f"{security}/v1/token/validation", headers=auth)
    b.add("token validation (direct)", target, "req/s", load.rps, ceilings["framework"], load=load)

    def me(seconds: float) -> Load:
        return b.wrk(f"{api}/v1/user", headers=auth, duration=seconds)

    if framework is None:
        mine, base = me(b.duration), ceilings["gateway"]
    else:  # two rates from one process each: compare them in alternating rounds
        bare, mine = b.alternating(lambda s: b.wrk(framework, duration=s), me)
        base = bare.rps
        b.add("bare FastAPI endpoint, alternating", "baseline", "req/s", base, load=bare)
    b.add("GET /v1/user (authenticated)", target, "req/s", mine.rps, base, load=mine)
    b.add("GET /v1/user (authenticated)", target, "p99 ms", mine.p99_ms, load=mine)

    for size in ("1mp", "12mp"):
        with peak_rss(uploader_pids) as peak:
            idle = tree_rss(uploader_pids)
            load = b.wrk(
                f"{api}/v1/upload",
                method="POST",
                body=IMAGES[size],
                tokens=upload_tokens,
                unique=True,
                connections=CORES * 2,
                duration=b.duration * (2 if size == "12mp" else 1),
            )
        scenario = f"upload {size.upper()} JPEG"
        b.add(scenario, target, "images/s", load.rps, ceilings[f"codec-{size}"], load=load)
        b.add(scenario, target, "p50 ms", load.p50_ms, load=load)
        b.add(scenario, target, "p99 ms", load.p99_ms, load=load)
        b.add(scenario, target, "peak RSS MiB", peak[0] / 2**20, load=load)
        if size == "12mp":
            bitmap = 4000 * 3000 * 3
            in_flight = CORES  # one upload per codec worker at a time
            b.add(scenario, target, "RSS/bitmap", (peak[0] - idle) / in_flight / bitmap, load=load)

    def download(
        url: str, conns: int, headers: dict[str, str] | None = None
    ) -> Callable[[int], Load]:
        return lambda s: b.wrk(url, headers=headers, connections=conns, duration=s)

    for size in ("100kb", "5mb"):
        conns = 32 if size == "100kb" else 8
        public = download(f"{api}/images/{stored[size]}", conns)
        owner = download(f"{api}/v1/user/{stored['own-' + size]}", conns, auth)
        if direct is None:
            loads = [public(b.duration), owner(b.duration)]
            ceiling = ceilings[f"direct-{size}"]
        else:  # the same bytes straight from storage, in turns with each download
            base, *loads = b.alternating(download(f"{direct}/{stored[size]}", conns), public, owner)
            ceiling = base.rps * len(IMAGES[size]) / 2**20
            b.add(f"MinIO direct GET {size}, alternating", "baseline", "MiB/s", ceiling, load=base)
        for kind, load in zip(("public", "owner"), loads, strict=True):
            b.add(
                f"{kind} download {size}",
                target,
                "MiB/s",
                load.rps * len(IMAGES[size]) / 2**20,
                ceiling,
                load=load,
            )
    return stored


def run(b: Bench, only: str = "all") -> None:
    make_images()
    print(f"machine: {CORES} cores; wrk -t1; {b.duration} s per load run", flush=True)
    if only in ("all", "startup"):
        startup.startup_rows(b)  # no load, no stack: first, on a machine not yet warm from wrk
        if only == "startup":
            return
    if only == "limits":
        limits_before_after(b)
        return
    if only == "serving":
        serving_rows(b)
        return
    # Every part below needs the stack (the events rows too).
    stack = stack_module()
    stack_was_up = (
        subprocess.run(
            [PY, str(ROOT / "deploy/local/stack.py"), "status"], capture_output=True
        ).returncode
        == 0
    )
    if not stack_was_up:
        subprocess.run(
            [PY, str(ROOT / "deploy/local/stack.py"), "up", "--demo"],
            check=True,
            capture_output=True,
        )
    port = free_port()
    framework = f"http://127.0.0.1:{port}/ping"
    try:
        if only == "all":
            with process([PY, str(ROOT / "bench" / "bare_app.py"), str(port)], framework):
                run_with_stack(b, stack, framework)
        if only in ("all", "feed"):
            feed_rows(b, stack)
        if only in ("all", "variants"):
            variants.variant_rows(b, sys.modules[__name__], stack)
        if only in ("all", "events"):
            event_rows(b, stack)  # last: its relay rounds leave the workers a backlog to handle
    finally:
        if not stack_was_up:
            subprocess.run([PY, str(ROOT / "deploy/local/stack.py"), "down"], capture_output=True)


def feed_rows(b: Bench, stack: ModuleType) -> None:
    """Issue 11's item 9 (bench/account_feed.py): token validation straight to a security
    replica and ``GET /v1/user`` through the gateway, with the replicas checking each account
    in the database (before) and in their in-memory account feed (after), alternating rounds.
    Goal: at least 3 times the database's rate."""
    api = f"http://127.0.0.1:{stack.PLAIN_PORT}"
    replicas = [f"http://127.0.0.1:{p}" for p in stack.SECURITY_PORTS]
    with httpx.Client(base_url=api, timeout=60) as c:
        tokens = [token for _, token in accounts(c, 8)]

    def measure() -> tuple[Load, Load]:
        return (
            b.wrk(f"{replicas[0]}/v1/token/validation", tokens=tokens),
            b.wrk(f"{api}/v1/user", tokens=tokens),
        )

    runs = account_feed.alternate(1 if b.quick else 3, replicas, measure)
    for i, label in enumerate(("token validation (direct)", "GET /v1/user (authenticated)")):
        before = Load.combine([r[i] for r in runs["database"]])
        after = Load.combine([r[i] for r in runs["feed"]])
        b.add(f"{label}: account read from the database", "stack", "req/s", before.rps, load=before)
        b.add(
            f"{label}: account feed (goal ≥ 3)", "stack", "req/s", after.rps, before.rps, load=after
        )
        b.add(f"{label}: account read from the database", "stack", "p99 ms", before.p99_ms)
        b.add(f"{label}: account feed", "stack", "p99 ms", after.p99_ms, load=after)


def event_rows(b: Bench, stack: ModuleType) -> None:
    """Issue 11's rows (bench/events.py): latency from an event's commit to its webhook's
    arrival at 200 events/s, and one relay's throughput next to Kafka's producer benchmark.

    The events are outbox rows inserted directly in PostgreSQL, not real uploads: at 200/s the
    codec (and Argon2 for registrations) would take both cores, and the latency would measure
    them rather than the event path (outbox → relay → Kafka → worker → webhook). They are
    clones of a real ``image.stored`` event (one real upload first), so every byte on the way
    is the real size, for eight accounts, each with a webhook to a receiver in this process.
    """
    api = f"http://127.0.0.1:{stack.PLAIN_PORT}"
    with httpx.Client(base_url=api, timeout=60) as c:
        tokens = [token for _, token in accounts(c, 8)]
        upload(c, tokens[0], IMAGES["100kb"])  # the real event the bench's events copy
    owners = [events.Account(t, events.user_id(api, t)) for t in tokens]
    template = events.template_event(stack, owners[0].user_id)

    seconds = 5 if b.quick else 20
    lat = events.measure_latency(stack, api, owners, template, rate=200, seconds=seconds)
    load = Load(0.0, lat.p50_ms, lat.p99_ms, lat.sent, lat.lost, 0)
    scenario = "event commit → webhook, 200/s (goal p99 ≤ 250 ms)"
    b.add(scenario, "stack", "p50 ms", lat.p50_ms, load=load, lossless=True)
    b.add(scenario, "stack", "p99 ms", lat.p99_ms, 250, load=load, lossless=True)
    if lat.duplicates:
        print(f"  {lat.duplicates} events arrived twice (dropped by webhook-id)", flush=True)

    count = 10_000 if b.quick else 50_000
    # The producer benchmark is a fresh JVM each round: below ~50,000 records its warm-up is
    # most of its time (9,600 events/s at 10,000 records, 31,000 at 50,000, same cluster), a
    # ceiling far too low. Its topic has no consumers, so more records cost only seconds; the
    # relay's rounds stay at ``count`` (the workers handle every event they publish).
    tool_count = max(count, 50_000)

    def counted(rate: events.Rate) -> Load:
        return Load(rate.per_second, 0.0, 0.0, rate.count, rate.lost, 0)

    with events.RelayBench(
        stack,
        b.work,
        owners,
        template,
        catch_up_timeout=120 if b.quick else 600,
    ) as relay_bench:
        relay, tool = b.alternating(
            lambda _: counted(relay_bench.relay_round(count)),
            lambda _: counted(relay_bench.tool_round(tool_count)),
        )
    b.add(
        "Kafka ProducerPerformance, the same records",
        "baseline",
        "events/s",
        tool.rps,
        load=tool,
        lossless=True,
    )
    b.add(
        f"relay: outbox backlog of {count:,} → Kafka (goal ≥ 0.5)",
        "stack",
        "events/s",
        relay.rps,
        tool.rps,
        load=relay,
        lossless=True,
    )


# The last commit before embedded mode's connection limits (server.py, middleware.BodyTimeout).
BEFORE_LIMITS = "ba1fce3"


STATIC_NGINX = (
    NGINX_HEAD
    + """    server {{ listen 127.0.0.1:{port} reuseport; root {static_dir}; }}
}}
"""
)


@contextmanager
def static_nginx(work: Path, files: dict[str, bytes]) -> Iterator[str]:
    """NGINX serving ``files`` from disk as the static baseline of ``baseline_nginx`` does
    (sendfile, reuseport, access log on); yields its base URL. Needs no stack."""
    run_dir, static_dir = work / "run", work / "static"
    for d in (run_dir, static_dir):
        d.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (static_dir / name).write_bytes(data)
    user = ""
    if os.geteuid() == 0:
        user = "user www-data;"
        shutil.chown(run_dir, "www-data")
        for folder in (work.parent, work):  # nginx workers (www-data) read the files
            os.chmod(folder, 0o755)  # noqa: S103
    port = free_port()
    conf = work / "nginx.conf"
    conf.write_text(STATIC_NGINX.format(user=user, run=run_dir, port=port, static_dir=static_dir))
    cmd = ["nginx", "-c", str(conf), "-p", str(work), "-g", "daemon off;"]
    url = f"http://127.0.0.1:{port}"
    with process(cmd, f"{url}/{next(iter(files))}"):
        yield url


def serving_rows(b: Bench, server: ServerProcess | None = None) -> None:
    """Stored images of 20 KB (a thumbnail) and 100 KB from embedded mode, public and owner
    routes, next to NGINX serving the same bytes from disk: three runs per size in alternating
    rounds (the ratio of two blocks taken apart is mostly the machine's noise). ``server`` is
    the full run's embedded server; alone (``--only serving``) one is started here."""
    started = server is None
    if server is None:
        (b.work / "serving").mkdir()
        server = ServerProcess(b.work / "serving" / "data").start()
    try:
        base = server.base_url
        with httpx.Client(base_url=base, timeout=60) as c:
            token = login(c)
            public = {k: upload(c, token, IMAGES[k]) for k in ("20kb", "100kb")}
            # Other bytes (a tail, which image formats ignore): the same bytes again from the
            # same account are its first upload (issue 13), public, not a private image.
            private = {
                k: upload(c, token, IMAGES[k] + b"private", "private") for k in ("20kb", "100kb")
            }
            files = {f"{k}.png": c.get(f"/images/{name}").content for k, name in public.items()}
        auth = {"Authorization": f"Bearer {token}"}

        def run(url: str, headers: dict[str, str] | None = None) -> Callable[[int], Load]:
            return lambda s: b.wrk(url, headers=headers, duration=s)

        with static_nginx(b.work / "serving-nginx", files) as static:
            for size in ("20kb", "100kb"):
                mib = len(files[f"{size}.png"]) / 2**20
                ceiling, pub, own = b.alternating(
                    run(f"{static}/{size}.png"),
                    run(f"{base}/images/{public[size]}"),
                    run(f"{base}/v1/user/{private[size]}", auth),
                )
                goal = " (goal ≥ 0.25)" if size == "20kb" else ""
                static_row = f"NGINX static {size}, alternating"
                b.add(static_row, "baseline", "MiB/s", ceiling.rps * mib, load=ceiling)
                for scenario, load in (
                    (f"public download {size}, alternating{goal}", pub),
                    (f"owner download {size}, alternating", own),
                ):
                    b.add(
                        scenario, "embedded", "MiB/s", load.rps * mib, ceiling.rps * mib, load=load
                    )
    finally:
        if started:
            server.stop()


def source_at(commit: str, work: Path) -> Path | None:
    """The ``src`` folder of ``commit``, unpacked by ``git archive`` (no worktree, no change to
    the repository); None where git or the commit is missing (a shallow clone)."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", commit, "src"], capture_output=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    dest = work / f"src-{commit}"
    dest.mkdir()
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "src"


def limits_before_after(b: Bench) -> None:
    """What the connection limits cost: embedded ``GET /v1/user`` and 1 MP uploads against the
    code before them (``BEFORE_LIMITS``, same venv) and the working tree's, in alternating
    rounds; then a flood of 64 KiB header blocks, each refused with 431 (rows marked as
    rejections), and the server's RSS meanwhile."""
    src = source_at(BEFORE_LIMITS, b.work)
    if src is None:
        print(f"connection limits before/after: skipped, no commit {BEFORE_LIMITS}", flush=True)
        return
    base = b.work / "limits"
    servers = {
        "before": ServerProcess(base / "before" / "data", env={"PYTHONPATH": str(src)}),
        "after": ServerProcess(base / "after" / "data"),
    }
    for server in servers.values():
        server.data_dir.parent.mkdir(parents=True)
    try:
        auths = {}
        upload_tokens: dict[str, list[str]] = {}
        for name, server in servers.items():
            try:
                server.start()
            except RuntimeError as exc:  # the old code may not run on a newer venv one day
                if name != "before":
                    raise
                print(f"connection limits before/after: skipped, {exc}"[:300], flush=True)
                return
            with httpx.Client(base_url=server.base_url, timeout=60) as c:
                auths[name] = {"Authorization": f"Bearer {login(c)}"}
                upload_tokens[name] = uploaders(c)

        def me(name: str) -> Callable[[int], Load]:
            url = f"{servers[name].base_url}/v1/user"
            return lambda s: b.wrk(url, headers=auths[name], duration=s)

        def upload_1mp(name: str) -> Callable[[int], Load]:
            url = f"{servers[name].base_url}/v1/upload"
            return lambda s: b.wrk(
                url,
                method="POST",
                body=IMAGES["1mp"],
                tokens=upload_tokens[name],
                unique=True,
                connections=CORES * 2,
                duration=s,
            )

        old, new = b.alternating(me("before"), me("after"))
        b.add("GET /v1/user before the hardening (ba1fce3)", "embedded", "req/s", old.rps, load=old)
        b.add("GET /v1/user after the hardening", "embedded", "req/s", new.rps, old.rps, load=new)
        old, new = b.alternating(upload_1mp("before"), upload_1mp("after"))
        before = "upload 1MP before the hardening (ba1fce3)"
        b.add(before, "embedded", "images/s", old.rps, load=old)
        b.add("upload 1MP after the hardening", "embedded", "images/s", new.rps, old.rps, load=new)

        after = servers["after"]
        assert after.process is not None
        pids = [after.process.pid]
        seconds = max(2, b.duration // 2)
        # The server process alone: the codec workers take no part in refusing headers.
        idle = tree_rss(pids, descendants=False)
        with peak_rss(pids, descendants=False) as peak:
            load = b.wrk(
                after.base_url + "/status", headers={"X-Big": "a" * 65536}, duration=seconds
            )
        scenario = "64 KiB header block refused (431)"
        b.add(
            scenario, "embedded", "refusals/s", load.requests / seconds, load=load, rejections=True
        )
        b.add(
            scenario,
            "embedded",
            "peak RSS growth MiB",
            (peak[0] - idle) / 2**20,
            load=load,
            rejections=True,
        )
        kept = tree_rss(pids, descendants=False) - idle  # wrk has closed its connections
        b.add(scenario, "embedded", "RSS kept MiB", kept / 2**20, load=load, rejections=True)
    finally:
        for server in servers.values():
            if server.process is not None:
                server.stop()


def before_after(b: Bench, stack: object, security: str, auth: dict[str, str]) -> None:
    """What profiling changed, measured now: a security replica configured as before
    (psycopg, every token verified) beside the stack's own (asyncpg, verified-token cache)."""
    port = free_port()
    env = {**os.environ, **stack.service_env("security")}  # type: ignore[attr-defined]
    env["IMAGEGATE_DATABASE_URL"] = env["IMAGEGATE_DATABASE_URL"].replace(
        "postgresql://", "postgresql+psycopg://"
    )
    env["IMAGEGATE_TOKEN_CACHE_SIZE"] = "0"  # noqa: S105 - a size, not a secret
    env["IMAGEGATE_ACCOUNT_FEED"] = "false"  # a database read per check, as before
    env["IMAGEGATE_LOG_LEVEL"] = "warning"
    cmd = [
        PY,
        "-m",
        "imagegate",
        "serve",
        "security",
        "--port",
        str(port),
        "--data-dir",
        str(b.work / "before"),
    ]
    with process(cmd, f"http://127.0.0.1:{port}/status", env=env):
        before = b.wrk(f"http://127.0.0.1:{port}/v1/token/validation", headers=auth)
    after = b.wrk(f"{security}/v1/token/validation", headers=auth)
    b.add("validation before: psycopg, no cache", "stack", "req/s", before.rps, load=before)
    b.add("validation after: asyncpg, cache", "stack", "req/s", after.rps, before.rps, load=after)


def run_with_stack(b: Bench, stack: object, framework: str) -> None:
    ceilings: dict[str, float] = {}
    ceilings["argon2"] = argon2_ceiling()
    b.add("Argon2id verify, all cores", "baseline", "logins/s", ceilings["argon2"])
    for size in ("1mp", "12mp"):
        ceilings[f"codec-{size}"] = codec_ceiling(IMAGES[size], b.duration)
        b.add(
            f"Pillow decode+encode {size.upper()}",
            "baseline",
            "images/s",
            ceilings[f"codec-{size}"],
        )

    # What profiling changed in the codec worker, measured now: one worker, 12 MP, without
    # and with the block cache (alternating rounds; the worker is otherwise the production one).
    src = b.work / "12mp.jpg"
    src.write_bytes(IMAGES["12mp"])
    shipped = Settings().codec_cache_mib
    before, after = (
        x.rps
        for x in b.alternating(
            lambda s: Load.rate(codec_worker_rate(src, 0, s)),
            lambda s: Load.rate(codec_worker_rate(src, shipped, s)),
        )
    )
    b.add("codec worker 12MP before: no block cache", "baseline", "images/s", before)
    b.add("codec worker 12MP after: block cache", "baseline", "images/s", after, before)

    load = b.wrk(framework)
    ceilings["framework"] = load.rps
    b.add("bare FastAPI endpoint (uvicorn)", "baseline", "req/s", load.rps, load=load)

    security = f"http://127.0.0.1:{stack.SECURITY_PORTS[0]}"  # type: ignore[attr-defined]
    with httpx.Client(base_url=f"http://127.0.0.1:{stack.PLAIN_PORT}") as c:  # type: ignore[attr-defined]
        token = login(c)
        public_name = upload(c, token, IMAGES["5mb"])
        small_name = upload(c, token, IMAGES["100kb"])
        stored_5mb = c.get(f"/images/{public_name}").content
        stored_100kb = c.get(f"/images/{small_name}").content
    auth = {"Authorization": f"Bearer {token}"}
    files = {"tiny.txt": b"ok", "100kb.png": stored_100kb, "5mb.png": stored_5mb}
    with baseline_nginx(b.work, files) as ports:
        static = f"http://127.0.0.1:{ports['static']}"
        load = b.wrk(f"{static}/tiny.txt")
        tiny = load.rps
        b.add(
            "NGINX static tiny file (load-generator ceiling)", "baseline", "req/s", tiny, load=load
        )
        for size in ("100kb", "5mb"):
            conns = 32 if size == "100kb" else 8
            load = b.wrk(f"{static}/{size}.png", connections=conns)
            b.add(
                f"NGINX static {size}",
                "baseline",
                "MiB/s",
                load.rps * len(files[f"{size}.png"]) / 2**20,
                load=load,
            )
        # The ceiling gets the very request the authenticated one is (its Authorization header
        # too), so the ratio is the cost of the check alone; the bare request is shown as well.
        proxy = f"http://127.0.0.1:{ports['proxy']}/x"
        load = b.wrk(proxy)
        b.add(
            "NGINX proxy → trivial, no auth header", "baseline", "req/s", load.rps, tiny, load=load
        )
        gateway, cached = b.alternating(
            lambda s: b.wrk(proxy, headers=auth, duration=s),
            lambda s: b.wrk(f"http://127.0.0.1:{ports['auth_cache']}/x", headers=auth, duration=s),
        )
        ceilings["gateway"] = gateway.rps
        b.add(
            "NGINX proxy → trivial upstream", "baseline", "req/s", gateway.rps, tiny, load=gateway
        )
        b.add(
            "auth_request (cached) → trivial",
            "stack",
            "req/s",
            cached.rps,
            gateway.rps,
            load=cached,
        )
        load = b.wrk(f"http://127.0.0.1:{ports['auth_nocache']}/x", headers=auth)
        b.add(
            "auth_request (no cache) → trivial", "stack", "req/s", load.rps, gateway.rps, load=load
        )

    minio = f"http://127.0.0.1:{stack.MINIO_PORT}/{stack.BUCKET}/public"  # type: ignore[attr-defined]
    for size, name in (("100kb", small_name), ("5mb", public_name)):
        conns = 32 if size == "100kb" else 8
        load = b.wrk(f"{minio}/{name}", connections=conns)
        ceilings[f"direct-{size}"] = load.rps * len(files[f"{size}.png"]) / 2**20
        b.add(
            f"MinIO direct GET {size}", "baseline", "MiB/s", ceilings[f"direct-{size}"], load=load
        )

    before_after(b, stack, security, auth)

    uploader_pids = [
        stack.COMPONENTS[n].pid()
        for n in ("uploader-1", "uploader-2")  # type: ignore[attr-defined]
    ]
    measure_target(
        b,
        "stack",
        f"http://127.0.0.1:{stack.PLAIN_PORT}",
        security,  # type: ignore[attr-defined]
        uploader_pids,
        ceilings,
        direct=minio,
    )

    (b.work / "embedded").mkdir()
    server = ServerProcess(b.work / "embedded" / "data").start()
    try:
        assert server.process is not None
        embedded_ceilings = dict(ceilings)
        for size in ("100kb", "5mb"):  # embedded serves from disk: NGINX static is its ceiling
            embedded_ceilings[f"direct-{size}"] = next(
                r.value for r in b.rows if r.scenario == f"NGINX static {size}"
            )
        measure_target(
            b,
            "embedded",
            server.base_url,
            server.base_url,
            [server.process.pid],
            embedded_ceilings,
            framework,
        )
        serving_rows(b, server)
    finally:
        server.stop()
    limits_before_after(b)


def main(argv: list[str] | None = None, *, on_row: Callable[[Row], None] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="bench/run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short runs (under 4 minutes)")
    parser.add_argument("--json", type=Path, help="write the rows as JSON to this file")
    parser.add_argument(
        "--only",
        choices=("all", "limits", "feed", "events", "serving", "variants", "startup"),
        default="all",
        help="limits: only the connection limits' rows (embedded, no stack); events: only the "
        "event rows (stack); serving: only embedded small-image downloads against NGINX static "
        "(no stack); variants: only the variant rows (bench/variants.py; stack); startup: "
        "only the start-up rows (bench/startup.py; no stack)",
    )
    args = parser.parse_args(argv)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="imagegate-bench-") as tmp:
        b = Bench(args.quick, Path(tmp))
        run(b, args.only)
    print(f"done in {time.monotonic() - start:.0f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in b.rows], indent=1) + "\n")


if __name__ == "__main__":
    main()
