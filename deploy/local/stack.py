r"""The production topology as plain processes on loopback, for development, tests and benches.

    deploy/local/stack up [--demo] | down | status | urls | start NAME | stop NAME | kill NAME
        (NAME: a component of `status`, or kafka for the three Kafka nodes together)
    deploy/local/stack kafka-tool [--user USER] CLASS [ARGS...]

NGINX (gateway) → security x2, uploader x2 → PostgreSQL and MinIO, each with its own data dir
and port under the state dir (IMAGEGATE_STACK_DIR, default .stack/). Events: the services write
an outbox; relay x2 (one active, one standing by) publish it to a 3-node Kafka cluster (KRaft,
each node broker + controller: kafka-1..3, client ports 9192-9194), worker x2 consume it.
Missing programs are installed: NGINX and PostgreSQL from Debian's packages, MinIO built from
its Go module (pinned, cached in ~/.cache/imagegate/bin), Kafka's jars resolved by Maven from
deploy/kafka/pom.xml (cached in ~/.cache/imagegate/kafka-VERSION-*; Java 17+ runs them). Secrets
(passwords, Kafka's cluster id and SCRAM users) are generated once into STATE/secrets.env (0600).

Kafka's users (SASL/SCRAM-SHA-512): admin (super user), relay (writes the imagegate.* topics),
worker (reads them in group imagegate-worker), reader (reads imagegate.accounts in groups
imagegate-replica-*). Topics and ACLs: deploy/local/kafka.py.

kafka-tool runs a class from Kafka's jars (a bare name means org.apache.kafka.tools.NAME) as
USER (default admin); the argument {client-config} becomes that user's client properties file.
Kafka's producer benchmark, into the benchmark topic (same layout as the real ones):

    deploy/local/stack kafka-tool ProducerPerformance --topic imagegate-bench \
        --num-records 200000 --record-size 1024 --throughput -1 \
        --producer.config {client-config} --producer-props acks=all
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("IMAGEGATE_STACK_DIR", ROOT / ".stack")).resolve()
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "imagegate"
MINIO_MODULE = "github.com/minio/minio"
MINIO_VERSION = "v0.0.0-20260212201848-7aac2a2c5b7c"
MINIO_BIN = CACHE / "bin" / f"minio-{MINIO_VERSION}"
IMAGEGATE = [sys.executable, "-m", "imagegate"]
BUCKET = "data"


def _load_kafka() -> ModuleType:
    """deploy/local/kafka.py, by path: this file is also loaded by path (tests/stack)."""
    spec = importlib.util.spec_from_file_location(
        "imagegate_stack_kafka", ROOT / "deploy/local/kafka.py"
    )
    assert spec
    assert spec.loader
    if spec.name in sys.modules:
        return sys.modules[spec.name]
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


kafka = _load_kafka()


def port(name: str, default: int) -> int:
    return int(os.environ.get(f"IMAGEGATE_STACK_{name}_PORT", default))


PLAIN_PORT = port("HTTP", 8000)  # the API over plain HTTP, loopback only (the curl session)
REDIRECT_PORT = port("REDIRECT", 8001)  # HTTP that redirects to HTTPS, as port 80 does
HTTPS_PORT = port("HTTPS", 8443)
PG_PORT = port("PG", 55432)
MINIO_PORT = port("MINIO", 9000)
SECURITY_PORTS = (port("SECURITY1", 9101), port("SECURITY2", 9102))
UPLOADER_PORTS = (port("UPLOADER1", 9201), port("UPLOADER2", 9202))
RELAY_PORTS = (port("RELAY1", 9301), port("RELAY2", 9302))
WORKER_PORTS = (port("WORKER1", 9401), port("WORKER2", 9402))
# Each service's Kafka user (tests/stack and the bench use them too).
KAFKA_USER = {"security": "reader", "uploader": "reader", "relay": "relay", "worker": "worker"}


def log(message: str) -> None:
    print(f"stack: {message}", file=sys.stderr, flush=True)


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=True, text=True, **kwargs)  # type: ignore[call-overload]


# --- installing what is missing ----------------------------------------------------------


def apt_install(*packages: str) -> None:
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        sys.exit(f"stack: please install {' '.join(packages)} (needs root and apt-get)")
    log(f"installing {' '.join(packages)} from Debian's packages")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run(["apt-get", "update", "-qq"], env=env)
    run(["apt-get", "install", "-y", "-qq", *packages], env=env, stdout=subprocess.DEVNULL)


def ensure_nginx() -> str:
    if not shutil.which("nginx"):
        apt_install("nginx-light")
    return shutil.which("nginx") or sys.exit("stack: nginx not found after install")


def pg_bin(tool: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    if not found:
        apt_install("postgresql")
        found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    return found[-1]


def ensure_minio() -> Path:
    if MINIO_BIN.exists():
        return MINIO_BIN
    go = shutil.which("go") or sys.exit("stack: Go is needed to build MinIO (go install)")
    log(f"building MinIO {MINIO_VERSION} from its Go module (once; cached in {MINIO_BIN.parent})")
    gobin = CACHE / "gobuild"
    run([go, "install", f"{MINIO_MODULE}@{MINIO_VERSION}"], env={**os.environ, "GOBIN": str(gobin)})
    MINIO_BIN.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(gobin / "minio", MINIO_BIN)
    return MINIO_BIN


# --- secrets and settings ----------------------------------------------------------------


def secrets_env() -> dict[str, str]:
    """Generated once; never in the repository. Values a newer layout adds are appended."""
    path = STATE / "secrets.env"
    if not path.exists():
        STATE.mkdir(parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    present = dict(line.split("=", 1) for line in path.read_text().split())
    fresh = {
        "PG_SUPER_PASSWORD": lambda: secrets.token_urlsafe(24),
        "PG_APP_PASSWORD": lambda: secrets.token_urlsafe(24),
        "MINIO_ROOT_USER": lambda: "imagegate-" + secrets.token_hex(4),
        "MINIO_ROOT_PASSWORD": lambda: secrets.token_urlsafe(24),
    }
    missing = {k: make() for k, make in fresh.items() if k not in present}
    if not any(k.startswith("KAFKA_") for k in present):
        missing |= kafka.new_secrets()
    if missing:
        with open(path, "a") as f:
            f.writelines(f"{k}={v}\n" for k, v in missing.items())
        present |= missing
    return present


CLUSTER = kafka.Cluster(STATE, CACHE, secrets_env)


def service_env(role: str) -> dict[str, str]:
    s = secrets_env()
    env = {
        "IMAGEGATE_DATABASE_URL": (
            f"postgresql://imagegate:{s['PG_APP_PASSWORD']}@127.0.0.1:{PG_PORT}/imagegate"
        ),
        "IMAGEGATE_STORAGE": "s3",
        "IMAGEGATE_S3_ENDPOINT": f"http://127.0.0.1:{MINIO_PORT}",
        "IMAGEGATE_S3_BUCKET": BUCKET,
        "IMAGEGATE_S3_ACCESS_KEY": s["MINIO_ROOT_USER"],
        "IMAGEGATE_S3_SECRET_KEY": s["MINIO_ROOT_PASSWORD"],
        "IMAGEGATE_TRUSTED_PROXIES": "127.0.0.1",
        "IMAGEGATE_ACCEL_REDIRECT_PREFIX": "/_storage",
        "IMAGEGATE_MIGRATE_ON_START": "false",
        "IMAGEGATE_LOG_LEVEL": os.environ.get("IMAGEGATE_LOG_LEVEL", "info"),
        "IMAGEGATE_EVENTS": "kafka",
        "IMAGEGATE_KAFKA_BOOTSTRAP": kafka.BOOTSTRAP,
        "IMAGEGATE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "IMAGEGATE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "IMAGEGATE_KAFKA_USERNAME": KAFKA_USER[role],
        "IMAGEGATE_KAFKA_PASSWORD": s[f"KAFKA_{KAFKA_USER[role].upper()}_PASSWORD"],
        "IMAGEGATE_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.0/8",  # receivers of tests and bench
    }
    if role == "security":
        env["IMAGEGATE_JWT_PRIVATE_KEY_FILE"] = str(STATE / "keys" / "jwt-signing-key.pem")
    else:
        env["IMAGEGATE_JWT_PUBLIC_KEY_FILE"] = str(STATE / "keys" / "jwt-public.pem")
        env["IMAGEGATE_CODEC_WORKERS"] = os.environ.get("IMAGEGATE_STACK_CODEC_WORKERS", "1")
    return env


# --- processes ---------------------------------------------------------------------------


@dataclass
class Component:
    name: str
    command: Callable[[], list[str]]
    health: str | None = None  # URL answering 200 when ready
    check: Callable[[], bool] | None = None  # or this answering True
    env: Callable[[], dict[str, str]] = dict
    user: str | None = None
    stop_command: Callable[[], list[str]] | None = None
    pidfile: Path | None = None  # for programs that daemonize themselves

    @property
    def log_path(self) -> Path:
        return STATE / "logs" / f"{self.name}.log"

    @property
    def pid_path(self) -> Path:
        return self.pidfile or STATE / "run" / f"{self.name}.pid"

    def pid(self) -> int | None:
        try:
            pid = int(self.pid_path.read_text().split()[0])
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError, IndexError):
            return None

    def healthy(self) -> bool:
        if self.check is not None:
            return self.pid() is not None and self.check()
        if self.health is None:
            return self.pid() is not None
        try:
            return httpx.get(self.health, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self, timeout: float = 90) -> None:
        proc = self.launch()
        if proc is not None:
            self.wait(proc, timeout)

    def launch(self) -> subprocess.Popen[bytes] | None:
        """Start the process (None if it already runs healthy); ``wait`` for it next."""
        if self.pid() is not None and self.healthy():
            return None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.pid_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env()}
        with open(self.log_path, "ab") as out:
            proc = subprocess.Popen(
                self.command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=STATE,
                start_new_session=True,
                user=self.user,
            )
        if self.pidfile is None:
            self.pid_path.write_text(f"{proc.pid}\n")
        return proc

    def wait(self, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pidfile is None and proc.poll() is not None:
                sys.exit(f"stack: {self.name} exited; see {self.log_path}")
            if self.pid() is not None and self.healthy():
                return
            time.sleep(0.2)
        sys.exit(f"stack: {self.name} did not become healthy; see {self.log_path}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> None:
        if self.stop_command is not None and sig == signal.SIGTERM and self.pid() is not None:
            subprocess.run(
                self.stop_command(),
                check=False,
                user=self.user,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        pid = self.pid()
        if pid is None:
            return
        # Each component leads its own process group: workers (codec pools, PostgreSQL
        # backends) go with it, as they would if its machine died.
        try:
            os.killpg(pid, sig)
        except (PermissionError, ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pid() is not None:
            time.sleep(0.1)
        if self.pid() is not None:
            os.killpg(pid, signal.SIGKILL)
        if self.pidfile is None:
            self.pid_path.unlink(missing_ok=True)


def pg_user() -> str | None:
    """PostgreSQL refuses to run as root; it runs as the packaged 'postgres' user then."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        run(["useradd", "--system", "--no-create-home", "postgres"])
    return "postgres"


def pg_command() -> list[str]:
    return [
        pg_bin("postgres"),
        "-D",
        str(STATE / "pg"),
        "-p",
        str(PG_PORT),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "unix_socket_directories=",
        "-c",
        "max_connections=200",
    ]


def minio_env() -> dict[str, str]:
    s = secrets_env()
    return {
        "MINIO_ROOT_USER": s["MINIO_ROOT_USER"],
        "MINIO_ROOT_PASSWORD": s["MINIO_ROOT_PASSWORD"],
        "MINIO_BROWSER": "off",
    }


def nginx_paths() -> tuple[Path, Path]:
    return STATE / "nginx" / "conf" / "nginx.conf", STATE / "nginx"


def service(role: str, index: int, port_: int) -> Component:
    data = STATE / f"{role}-{index}"
    demo = role in ("security", "uploader")  # the demo account is made by an API role
    return Component(
        name=f"{role}-{index}",
        command=lambda: [
            *IMAGEGATE,
            "serve",
            role,
            "--host",
            "127.0.0.1",
            "--port",
            str(port_),
            "--data-dir",
            str(data),
            *(["--demo"] if DEMO and demo else []),
        ],
        health=f"http://127.0.0.1:{port_}/healthz",
        env=lambda: service_env(role),
    )


DEMO = False
COMPONENTS: dict[str, Component] = {
    "postgres": Component(
        "postgres",
        pg_command,
        stop_command=lambda: [pg_bin("pg_ctl"), "stop", "-D", str(STATE / "pg"), "-m", "fast"],
        pidfile=STATE / "pg" / "postmaster.pid",
    ),
    "minio": Component(
        "minio",
        lambda: [
            str(MINIO_BIN),
            "server",
            "--quiet",
            "--address",
            f"127.0.0.1:{MINIO_PORT}",
            str(STATE / "minio"),
        ],
        health=f"http://127.0.0.1:{MINIO_PORT}/minio/health/live",
        env=minio_env,
    ),
    **{
        n.name: Component(
            n.name,
            lambda n=n: CLUSTER.command(n),
            check=lambda n=n: CLUSTER.serving(n),
        )
        for n in kafka.NODES
    },
    **{c.name: c for i, p in enumerate(SECURITY_PORTS, 1) if (c := service("security", i, p))},
    **{c.name: c for i, p in enumerate(UPLOADER_PORTS, 1) if (c := service("uploader", i, p))},
    **{c.name: c for i, p in enumerate(RELAY_PORTS, 1) if (c := service("relay", i, p))},
    **{c.name: c for i, p in enumerate(WORKER_PORTS, 1) if (c := service("worker", i, p))},
    "gateway": Component(
        "gateway",
        lambda: [
            "nginx",
            "-c",
            str(nginx_paths()[0]),
            "-p",
            str(nginx_paths()[1]),
            "-g",
            "daemon off;",
        ],
        health=f"http://127.0.0.1:{PLAIN_PORT}/status",
    ),
}
COMPONENTS["postgres"].user = pg_user()


def pg_ready() -> bool:
    try:
        with psycopg.connect(**pg_admin(), connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def pg_admin() -> dict[str, object]:
    return {
        "host": "127.0.0.1",
        "port": PG_PORT,
        "user": "postgres",
        "dbname": "postgres",
        "password": secrets_env()["PG_SUPER_PASSWORD"],
    }


def start_postgres() -> None:
    data = STATE / "pg"
    user = COMPONENTS["postgres"].user
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        pwfile = STATE / "run" / "pg-pw"
        pwfile.parent.mkdir(parents=True, exist_ok=True)
        pwfile.write_text(secrets_env()["PG_SUPER_PASSWORD"])
        if user:
            shutil.chown(data, user)
            shutil.chown(pwfile, user)
        os.chmod(data, 0o700)
        run(
            [
                pg_bin("initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "-E",
                "UTF8",
            ],
            user=user,
            stdout=subprocess.DEVNULL,
        )
        pwfile.unlink()
    comp = COMPONENTS["postgres"]
    if comp.pid() is None:
        comp.start()
    deadline = time.monotonic() + 60
    while not pg_ready():
        if time.monotonic() > deadline:
            sys.exit(f"stack: postgres did not start; see {comp.log_path}")
        time.sleep(0.3)
    with psycopg.connect(**pg_admin(), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'imagegate'").fetchone():
            password = secrets_env()["PG_APP_PASSWORD"]
            conn.execute(f"CREATE ROLE imagegate LOGIN PASSWORD '{password}'")
            conn.execute("CREATE DATABASE imagegate OWNER imagegate")


def render(template: Path, values: dict[str, str]) -> str:
    """Fill ${NAME} placeholders (the envsubst style the nginx image uses too)."""

    def fill(match: re.Match[str]) -> str:
        return values[match.group(1)]

    return re.sub(r"\$\{([A-Z_][A-Z0-9_]*)\}", fill, template.read_text())


SYSTEM_CA_FILE = "/etc/ssl/certs/ca-certificates.crt"
# The stand-in for a load balancer or an Ingress in front of the gateway: a client connecting
# from this loopback address is a trusted proxy (tests bind it as their source address).
TRUSTED_PROXIES = os.environ.get("IMAGEGATE_STACK_TRUSTED_PROXIES", "127.0.0.2/32").split()


def trusted_proxy_values(proxies: list[str]) -> dict[str, str]:
    """The two placeholders that carry the trusted proxies (nginx.conf.template)."""
    return {
        "REAL_IP_FROM": " ".join(f"set_real_ip_from {p};" for p in proxies),
        "TRUSTED_PROXY_GEO": " ".join(f"{p} 1;" for p in proxies),
    }


def owner_cache_dir() -> Path:
    """The gateway's owner-read cache (whole tokens in its keys): in memory where possible,
    in a folder of this user's only (checked when it is made, see ``private_dir``)."""
    shm = Path("/dev/shm")  # noqa: S108 - tmpfs on purpose; the folder is checked as ours
    base = shm if shm.is_dir() else STATE / "nginx"
    return base / f"imagegate-stack-{os.geteuid()}-{PLAIN_PORT}" / "owner-cache"


def private_dir(path: Path) -> None:
    """Make ``path``'s parent the gateway's and closed to others (refuse one someone else
    made): ours, or NGINX's workers' (www-data) when we run as root."""
    parent = path.parent
    fresh = not parent.exists()
    parent.mkdir(mode=0o700, exist_ok=True)
    owner = os.geteuid()
    if owner == 0:
        import pwd

        owner = pwd.getpwnam("www-data").pw_uid
        if fresh:
            os.chown(parent, owner, -1)
    st = parent.stat()
    if st.st_uid != owner or st.st_mode & 0o077:
        sys.exit(f"stack: {parent} is not the gateway's private folder; remove it")


def gateway_values(conf_dir: Path, run_dir: Path, log_dir: Path) -> dict[str, str]:
    """Every placeholder of deploy/nginx/*.template for this stack."""
    from imagegate.tls import ensure_self_signed

    cert, key = ensure_self_signed(STATE / "tls")
    user_directive = "user www-data;" if os.geteuid() == 0 else ""
    servers = "server 127.0.0.1:{} max_fails=1 fail_timeout=3s;"
    return {
        "NGINX_USER_DIRECTIVE": user_directive,
        "RUNTIME_DIR": str(run_dir),
        "OWNER_CACHE_DIR": str(owner_cache_dir()),
        "LOG_DIR": str(log_dir),
        "CONF_DIR": str(conf_dir),
        "SECURITY_SERVERS": " ".join(servers.format(p) for p in SECURITY_PORTS),
        "UPLOADER_SERVERS": " ".join(servers.format(p) for p in UPLOADER_PORTS),
        "MINIO_SERVERS": f"server 127.0.0.1:{MINIO_PORT};",
        "MINIO_HOST": f"127.0.0.1:{MINIO_PORT}",
        "S3_SCHEME": "http",
        "S3_TLS_NAME": "localhost",
        "S3_CA_FILE": SYSTEM_CA_FILE,
        "S3_BUCKET": BUCKET,
        "PLAIN_HTTP_SERVER": (
            f"server {{ listen 127.0.0.1:{PLAIN_PORT} reuseport; "
            f"include {conf_dir}/imagegate-routes.conf; }}"
        ),
        "HTTP_LISTEN": f"127.0.0.1:{REDIRECT_PORT}",
        "HTTPS_LISTEN": f"127.0.0.1:{HTTPS_PORT}",
        "HTTPS_PORT_SUFFIX": f":{HTTPS_PORT}",
        "TLS_CERT": str(cert),
        "TLS_KEY": str(key),
        "UPLOAD_MAX": "40m",
        "LOGIN_RATE": os.environ.get("IMAGEGATE_STACK_LOGIN_RATE", "20r/s"),
        "LOGIN_BURST": os.environ.get("IMAGEGATE_STACK_LOGIN_BURST", "40"),
        "AUTH_CACHE": os.environ.get("IMAGEGATE_STACK_AUTH_CACHE", "auth"),
        "OPENAPI_FILE": str(STATE / "openapi.json"),
        "WEB_ROOT": str(STATE / "web"),
        **trusted_proxy_values(TRUSTED_PROXIES),
    }


def write_gateway_config(conf_dir: Path, values: dict[str, str]) -> None:
    """deploy/nginx rendered into ``conf_dir``: templates filled, other files copied."""
    source = ROOT / "deploy" / "nginx"
    for item in source.iterdir():
        target = conf_dir / item.name.removesuffix(".template")
        target.write_text(render(item, values) if item.suffix == ".template" else item.read_text())


def prepare_gateway() -> None:
    conf, prefix = nginx_paths()
    conf_dir, run_dir, log_dir = conf.parent, prefix / "run", STATE / "logs"
    shutil.rmtree(conf_dir, ignore_errors=True)  # rendered afresh: no file of an older layout
    for d in (conf_dir, run_dir, log_dir):
        d.mkdir(parents=True, exist_ok=True)
    values = gateway_values(conf_dir, run_dir, log_dir)
    Path(values["OPENAPI_FILE"]).write_text(
        subprocess.run(
            [*IMAGEGATE, "openapi", "--data-dir", str(STATE / "openapi-build")],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )
    web = Path(values["WEB_ROOT"])
    shutil.rmtree(web, ignore_errors=True)  # exported afresh: no asset of an older release
    run([*IMAGEGATE, "web", "export", str(web)], stdout=subprocess.DEVNULL)
    owner_cache = owner_cache_dir()
    private_dir(owner_cache)
    shutil.rmtree(owner_cache, ignore_errors=True)
    owner_cache.mkdir(mode=0o700)
    if os.geteuid() == 0:
        run(["chown", "-R", "www-data", str(run_dir), str(owner_cache)])
    write_gateway_config(conf_dir, values)
    run(["nginx", "-t", "-q", "-c", str(conf), "-p", str(prefix)])


def prepare_keys() -> None:
    keys = STATE / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    public = subprocess.run(
        [*IMAGEGATE, "keys", "public", "--data-dir", str(keys)],
        env={**os.environ, "IMAGEGATE_JWT_PRIVATE_KEY_FILE": str(keys / "jwt-signing-key.pem")},
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    (keys / "jwt-public.pem").write_text(public)


def up(demo: bool) -> None:
    global DEMO
    DEMO = demo
    STATE.mkdir(parents=True, exist_ok=True)
    ensure_nginx()
    ensure_minio()
    start_postgres()
    COMPONENTS["minio"].start()
    kafka_nodes = launch_kafka()  # the JVMs boot while the bucket and schema are prepared
    env = {**os.environ, **service_env("uploader")}
    run(
        [*IMAGEGATE, "storage", "init", "--data-dir", str(STATE / "admin")],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    run(
        [*IMAGEGATE, "db", "upgrade", "--data-dir", str(STATE / "admin")],
        env=env,
        stdout=subprocess.DEVNULL,
    )
    prepare_keys()
    wait_kafka(kafka_nodes)
    for name in ("security-1", "security-2", "uploader-1", "uploader-2"):
        COMPONENTS[name].start()
    # No demo account to race on: the relays and workers start together.
    for comp, proc in [(COMPONENTS[n], COMPONENTS[n].launch()) for n in EVENT_NAMES]:
        if proc is not None:
            comp.wait(proc)
    prepare_gateway()
    COMPONENTS["gateway"].start()
    print(json.dumps(urls(), indent=2))


KAFKA_NAMES = [n.name for n in kafka.NODES]
EVENT_NAMES = ["relay-1", "relay-2", "worker-1", "worker-2"]


Launched = list[tuple[Component, "subprocess.Popen[bytes] | None"]]


def ensure_java_maven() -> None:
    """Java runs Kafka; Maven fetches its jars (once). Debian's default JRE is 17+."""
    wanted = {"java": "default-jre-headless", "mvn": "maven"}
    missing = [package for tool, package in wanted.items() if not shutil.which(tool)]
    if missing and not (shutil.which("java") and CLUSTER.jars_cached()):
        apt_install(*missing)


def launch_kafka() -> Launched:
    """All nodes at once: a lone node has no quorum to join, so none is waited for alone."""
    ensure_java_maven()
    CLUSTER.ensure_jars()
    return [(COMPONENTS[name], COMPONENTS[name].launch()) for name in KAFKA_NAMES]


def wait_kafka(launched: Launched, timeout: float = 180) -> None:
    """Every node serving, then the topics and ACLs."""
    started = time.monotonic()
    for comp, proc in launched:
        if proc is not None:
            comp.wait(proc, timeout)
    CLUSTER.setup()
    log(f"Kafka serving, topics and ACLs in place (waited {time.monotonic() - started:.1f} s)")


def urls() -> dict[str, str]:
    return {
        "http": f"http://127.0.0.1:{PLAIN_PORT}",
        "https": f"https://127.0.0.1:{HTTPS_PORT}",
        "http_redirect": f"http://127.0.0.1:{REDIRECT_PORT}",
        "ca_bundle": str(STATE / "tls" / "cert.pem"),
        "minio": f"http://127.0.0.1:{MINIO_PORT}",
        "bucket": BUCKET,
        "kafka_bootstrap": kafka.BOOTSTRAP,
        "state_dir": str(STATE),
    }


def kill_kafka() -> None:
    for name in KAFKA_NAMES:
        COMPONENTS[name].stop(signal.SIGKILL)


def down() -> None:
    for name in reversed(list(COMPONENTS)):
        if name == KAFKA_NAMES[-1]:
            stop_kafka()
        elif name not in KAFKA_NAMES:
            COMPONENTS[name].stop()


def stop_kafka() -> None:
    """Signal every node, then wait: one by one, the last nodes would wait for a quorum."""
    running = [c for c in (COMPONENTS[n] for n in KAFKA_NAMES) if c.pid() is not None]
    threads = [threading.Thread(target=c.stop) for c in running]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def status() -> int:
    bad = 0
    for name, comp in COMPONENTS.items():
        pid, ok = comp.pid(), comp.healthy()
        bad += not ok
        print(f"{name:12} {'up' if ok else 'DOWN':5} pid={pid or '-'}")
    if not bad:
        print(json.dumps(urls(), indent=2))
    return 1 if bad else 0


def kafka_tool(argv: list[str]) -> int:
    """``kafka-tool [--user USER] CLASS [ARGS...]`` (see the module's docstring)."""
    user = "admin"
    if argv[:1] == ["--user"] and len(argv) > 1:
        user, argv = argv[1], argv[2:]
    if not argv or user not in kafka.USERS:
        sys.exit(f"usage: deploy/local/stack kafka-tool [--user {'|'.join(kafka.USERS)}] CLASS ...")
    code: int = CLUSTER.tool(user, argv[0], argv[1:])
    return code


def main() -> None:
    if sys.argv[1:2] == ["kafka-tool"]:
        sys.exit(kafka_tool(sys.argv[2:]))
    parser = argparse.ArgumentParser(
        prog="deploy/local/stack",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "action", choices=["up", "down", "status", "start", "stop", "kill", "urls", "kafka-tool"]
    )
    # "kafka" names the three nodes together (a lone node has no quorum to start with).
    parser.add_argument("name", nargs="?", choices=[*COMPONENTS, "kafka"])
    parser.add_argument("--demo", action="store_true", help="create the demo user bob/qwe123")
    args = parser.parse_args()
    if args.action in ("start", "stop", "kill") and not args.name:
        parser.error(f"{args.action} needs a component name")
    if args.action == "up":
        up(args.demo)
    elif args.action == "down":
        down()
    elif args.action == "status":
        sys.exit(status())
    elif args.action == "urls":
        print(json.dumps(urls(), indent=2))
    elif args.action == "start":
        global DEMO
        DEMO = args.demo
        if args.name == "postgres":
            start_postgres()
        elif args.name == "kafka":
            wait_kafka(launch_kafka())
        else:
            if args.name == "gateway":
                prepare_gateway()
            COMPONENTS[args.name].start()
    elif args.name == "kafka" and args.action == "stop":
        stop_kafka()
    elif args.name == "kafka":
        kill_kafka()
    elif args.action == "stop":
        COMPONENTS[args.name].stop()
    else:
        COMPONENTS[args.name].stop(signal.SIGKILL)


if __name__ == "__main__":
    main()
