"""Connection limits of ``imagegate serve`` (NGINX's, in embedded mode), with raw sockets:
header size and count caps (431), header and body read timeouts (408 or close), keep-alive
idle timeout and request cap, the connection cap (503), and the log volume of a flood."""

from __future__ import annotations

import json
import select
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import Account, register_and_login
from tests.support.server import ServerProcess

HEADER_TIMEOUT = 1.5
BODY_TIMEOUT = 1.5
KEEPALIVE_TIMEOUT = 3.0
KEEPALIVE_REQUESTS = 3
MAX_CONNECTIONS = 8
MAX_HEADER_BYTES = 32 * 1024
MAX_HEADERS = 100
MARGIN = 3.0  # seconds a close may come after its timeout on a loaded machine
LIMITS_ENV = {
    "IMAGEGATE_HTTP_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
    "IMAGEGATE_HTTP_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
    "IMAGEGATE_HTTP_KEEPALIVE_TIMEOUT_SECONDS": str(KEEPALIVE_TIMEOUT),
    "IMAGEGATE_HTTP_KEEPALIVE_REQUESTS": str(KEEPALIVE_REQUESTS),
    "IMAGEGATE_HTTP_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    "IMAGEGATE_HTTP_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
    "IMAGEGATE_HTTP_MAX_HEADERS": str(MAX_HEADERS),
    "IMAGEGATE_LOG_LEVEL": "info",  # the access log is on: its volume is tested below
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("conn") / "data", env=LIMITS_ENV).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("conn-tls") / "data",
        args=("--demo", "--tls"),
        env=LIMITS_ENV,
        scheme="https",
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def user(server: ServerProcess) -> Account:
    with httpx.Client(base_url=server.base_url) as c:
        return register_and_login(c)


# --- raw HTTP ------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, str]:
        assert self.headers["content-type"] == "application/json", self.headers
        data = json.loads(self.body)
        assert isinstance(data, dict)
        return data


def connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    if server.scheme == "https":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context.wrap_socket(sock)
    return sock


def read_answer(sock: socket.socket, timeout: float = 30.0, data: bytes = b"") -> Answer:
    """One HTTP/1.1 response with a Content-Length (every answer here has one); ``data`` is
    what was already read of it."""
    sock.settimeout(timeout)
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before an answer: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed in the middle of an answer"
        body += chunk
    return Answer(int(lines[0].split()[1]), headers, body[:length])


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed ``sock`` (EOF or reset), or None if it stayed open."""
    start = time.monotonic()
    deadline = start + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return time.monotonic() - start
        except TimeoutError:
            return None
        except (ConnectionResetError, ssl.SSLError):
            return time.monotonic() - start
    return None


def get(path: str = "/status", extra: bytes = b"") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: test\r\n".encode() + extra + b"\r\n"


def send_until_answered(sock: socket.socket, first: bytes, total: int) -> tuple[int, bytes]:
    """Send ``first`` and then filler until ``total`` bytes or until the server answers;
    returns the bytes sent and what was read of the answer."""
    sock.sendall(first)
    sent, chunk = len(first), b"a" * 65536
    while sent < total:
        if select.select([sock], [], [], 0)[0]:
            # Readable: the answer, or (TLS 1.3) a session ticket that is no answer at all.
            sock.settimeout(0)
            try:
                data = sock.recv(65536)
            except (ssl.SSLWantReadError, BlockingIOError):
                data = None
            finally:
                sock.settimeout(30)
            if data is not None:
                return sent, data
        try:
            sock.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(chunk)
    return sent, b""


def rss(server: ServerProcess) -> int:
    assert server.process is not None
    return int(psutil.Process(server.process.pid).memory_info().rss)


def log_lines(server: ServerProcess, needle: str) -> list[str]:
    assert server.log_path is not None
    return [x for x in server.log_path.read_text().splitlines() if needle in x]


# --- header caps -----------------------------------------------------------------------------


def oversized_header(server: ServerProcess) -> tuple[Answer, int]:
    with connect(server) as sock:
        first = b"GET /status HTTP/1.1\r\nHost: t\r\nX-Big: "
        sent, data = send_until_answered(sock, first, 50 * 2**20)
        return read_answer(sock, data=data), sent


def test_a_50_mb_header_is_refused_early_and_costs_no_memory(server: ServerProcess) -> None:
    oversized_header(server)  # the first one warms up whatever a first rejection allocates
    before = rss(server)
    start = time.monotonic()
    answer, sent = oversized_header(server)
    elapsed = time.monotonic() - start
    assert answer.status == 431
    assert str(MAX_HEADER_BYTES) in answer.json()["error"]
    assert answer.headers["connection"] == "close"
    # The answer came long before the 50 MB were sent: the server read about the cap, not more.
    assert sent < 8 * 2**20, sent
    assert elapsed < 10
    grown = rss(server) - before
    assert grown < 4 * 2**20, f"server grew by {grown} bytes"


def test_10000_headers_are_refused(server: ServerProcess) -> None:
    headers = b"".join(b"X-%d: v\r\n" % i for i in range(10_000))
    with connect(server) as sock:
        _, data = send_until_answered(sock, get(extra=headers), 0)
        answer = read_answer(sock, data=data)
    assert answer.status == 431
    assert "error" in answer.json()


def test_header_count_cap_in_a_small_header_block(server: ServerProcess) -> None:
    def status(count: int) -> tuple[int, dict[str, str]]:
        # Host is one header line; ``count`` lines in all, 600 bytes or so: under the byte cap.
        extra = b"".join(b"X-%d: v\r\n" % i for i in range(count - 1))
        with connect(server) as sock:
            sock.sendall(get(extra=extra))
            answer = read_answer(sock)
        return answer.status, answer.json()

    assert status(MAX_HEADERS)[0] == 200
    code, body = status(MAX_HEADERS + 1)
    assert code == 431
    assert f"more than {MAX_HEADERS} header lines" in body["error"]


# --- timeouts -----------------------------------------------------------------------------


def test_slowloris_headers_are_cut_at_the_header_timeout(server: ServerProcess) -> None:
    """Bytes trickling in do not extend the deadline: it counts from the connection's start."""
    with connect(server) as sock:
        start = time.monotonic()
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: t\r\n")
        answer = None
        deadline = start + HEADER_TIMEOUT + MARGIN
        while time.monotonic() < deadline:
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            if select.select([sock], [], [], 0.2)[0]:
                answer = read_answer(sock)
                break
        elapsed = time.monotonic() - start
        assert answer is not None, "no answer to a request whose headers never ended"
        assert answer.status == 408
        assert "headers" in answer.json()["error"]
        assert closed_within(sock, MARGIN) is not None
    assert elapsed < HEADER_TIMEOUT + MARGIN


def test_a_silent_connection_is_closed_at_the_header_timeout(server: ServerProcess) -> None:
    with connect(server) as sock:
        took = closed_within(sock, HEADER_TIMEOUT + MARGIN)
    assert took is not None, "an idle new connection stayed open"


def start_upload(sock: socket.socket, user: Account, framing: str, first: bytes, tmp: Path) -> None:
    """Send an upload's head (with ``framing``) and its ``first`` bytes; wait until the server is
    receiving it into a temp file."""
    head = (
        "POST /v1/upload HTTP/1.1\r\nHost: t\r\n"
        f"Authorization: Bearer {user.token}\r\n{framing}\r\n\r\n"
    ).encode()
    sock.sendall(head + first)
    deadline = time.monotonic() + 10
    while not any(tmp.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert any(tmp.iterdir()), "the upload never reached the temp folder"


def test_a_stalled_upload_gets_408_and_leaves_no_temp_file(
    server: ServerProcess, user: Account
) -> None:
    tmp = server.data_dir / "tmp"
    with connect(server) as sock:
        # The upload is being received into a temp file; then the client stalls.
        start_upload(sock, user, "Content-Length: 1000000", b"\xff\xd8\xff" + b"\0" * 70_000, tmp)
        start = time.monotonic()
        answer = read_answer(sock, timeout=BODY_TIMEOUT + MARGIN)
        assert time.monotonic() - start < BODY_TIMEOUT + MARGIN
        assert answer.status == 408
        assert "stalled" in answer.json()["error"]
        assert answer.headers["connection"] == "close"
        assert closed_within(sock, MARGIN) is not None
    assert not list(tmp.iterdir())


def test_a_stalled_json_body_gets_408(server: ServerProcess) -> None:
    head = b"POST /v1/token HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    with connect(server) as sock:
        sock.sendall(head + b'Content-Length: 100\r\n\r\n{"login": ')
        answer = read_answer(sock, timeout=BODY_TIMEOUT + MARGIN)
    assert answer.status == 408
    assert "stalled" in answer.json()["error"]


def test_keepalive_request_cap_and_idle_timeout(server: ServerProcess) -> None:
    with connect(server) as sock:
        for i in range(1, KEEPALIVE_REQUESTS + 1):
            sock.sendall(get())
            answer = read_answer(sock)
            assert answer.status == 200
            closing = answer.headers.get("connection") == "close"
            assert closing == (i == KEEPALIVE_REQUESTS), (i, answer.headers)
        assert closed_within(sock, MARGIN) is not None
    with connect(server) as sock:
        sock.sendall(get())
        assert read_answer(sock).status == 200
        took = closed_within(sock, KEEPALIVE_TIMEOUT + MARGIN)
        assert took is not None, "an idle keep-alive connection stayed open"
        assert took > KEEPALIVE_TIMEOUT / 2  # idle for its timeout, not closed at once


# --- the connection cap -----------------------------------------------------------------------


def test_connection_cap_answers_503(server: ServerProcess) -> None:
    """Connections kept open (idle keep-alive, well within their timeout) up to the cap; one
    more is answered 503 at once. Closing them makes room again."""
    socks: list[socket.socket] = []
    refused: Answer | None = None
    try:
        for _ in range(MAX_CONNECTIONS + 4):
            sock = connect(server)
            socks.append(sock)
            sock.sendall(get())
            answer = read_answer(sock)
            if answer.status == 503:
                refused = answer
                break
            assert answer.status == 200
        assert refused is not None, "no connection was refused"
        # Connections still closing from earlier tests may hold a place or two.
        assert 1 <= len(socks) - 1 <= MAX_CONNECTIONS
        assert "connection limit" in refused.json()["error"]
        assert int(refused.headers["retry-after"]) > 0
    finally:
        for sock in socks:
            sock.close()
    deadline = time.monotonic() + 10
    while True:
        with connect(server) as sock:
            sock.sendall(get())
            if read_answer(sock).status == 200:
                break
        assert time.monotonic() < deadline, "capacity did not come back"
        time.sleep(0.1)


# --- log volume -------------------------------------------------------------------------------


def test_a_flood_of_rejections_writes_a_bounded_log(server: ServerProcess) -> None:
    """400 rejected requests (200 refused by the app with 413, 200 by the server with 431)
    write at most 20 lines each (logs.BURST) plus a summary line that carries the count."""
    floods = 200
    body_413 = log_lines(server, '"POST /v1/token" 413')
    body_431 = log_lines(server, " 431 request has more than")
    too_big = b"POST /v1/token HTTP/1.1\r\nHost: t\r\nContent-Length: 99999999\r\n\r\n"
    for _ in range(floods):
        with connect(server) as sock:
            sock.sendall(too_big)
            assert read_answer(sock).status == 413
    extra = b"".join(b"X-%d: v\r\n" % i for i in range(MAX_HEADERS + 1))
    for _ in range(floods):
        with connect(server) as sock:
            sock.sendall(get(extra=extra))
            assert read_answer(sock).status == 431
    new_413 = len(log_lines(server, '"POST /v1/token" 413')) - len(body_413)
    new_431 = len(log_lines(server, " 431 request has more than")) - len(body_431)
    assert 1 <= new_413 <= 21, new_413
    assert 1 <= new_431 <= 21, new_431
    # When the 10 s window ends, one line says how many were left out.
    deadline = time.monotonic() + 20
    while True:
        summaries = log_lines(server, "suppressed")
        counted = sum(int(x.split("suppressed ")[1].split()[0]) for x in summaries)
        if counted >= 2 * floods - new_413 - new_431:
            break
        assert time.monotonic() < deadline, summaries
        time.sleep(0.2)
    assert not log_lines(server, "Traceback")


# --- TLS -----------------------------------------------------------------------------------


def test_limits_over_tls(tls_server: ServerProcess) -> None:
    answer, sent = oversized_header(tls_server)
    assert answer.status == 431
    assert sent < 8 * 2**20
    with connect(tls_server) as sock:
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: t\r\n")
        answer = read_answer(sock, timeout=HEADER_TIMEOUT + MARGIN)
    assert answer.status == 408
    with httpx.Client(base_url=tls_server.base_url, verify=False) as c:
        assert c.get("/healthz").status_code == 200


def test_normal_requests_still_work(server: ServerProcess, user: Account) -> None:
    with httpx.Client(base_url=server.base_url, timeout=30) as c:
        assert c.get("/healthz").status_code == 200
        me = c.get("/v1/user", headers=user.auth)
        assert me.status_code == 200
        assert me.json()["login"] == user.login
    assert not list(Path(server.data_dir, "tmp").iterdir())


def test_a_malformed_chunk_in_an_upload_closes_at_once(
    server: ServerProcess, user: Account
) -> None:
    tmp = server.data_dir / "tmp"
    with connect(server) as sock:
        start_upload(sock, user, "Transfer-Encoding: chunked", b"4\r\n\xff\xd8\xff\x00\r\n", tmp)
        sock.sendall(b"zz-not-a-size\r\n")
        # Closed by the parse error itself, as uvicorn did: not left to the body timeout (408).
        sock.settimeout(BODY_TIMEOUT + MARGIN)
        got = b""
        try:
            while chunk := sock.recv(65536):
                got += chunk
        except ConnectionResetError:
            pass  # closed with the rest of our bytes unread: a reset, as good as a close
        assert b" 408 " not in got, got
    deadline = time.monotonic() + 10
    while list(tmp.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not list(tmp.iterdir())
