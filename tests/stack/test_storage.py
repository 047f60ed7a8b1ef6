"""The bucket behind the gateway: what refused and deleted uploads leave in MinIO (nothing),
orphans cleared after their grace time, `imagegate storage init`, POSTs never replayed on
another replica, and metrics that add up across replicas."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
import pytest

from tests.conftest import Account, register_and_login
from tests.contract.test_ops import metric, metric_samples
from tests.stack.conftest import Stack, stack_module
from tests.support import images

MIB = 1024 * 1024


def _wait_until(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _upload(c: httpx.Client, account: Account, data: bytes, **params: str) -> httpx.Response:
    return c.post("/v1/upload", content=data, headers=account.auth, params=params)


def test_refused_uploads_leave_no_object_in_the_bucket(stack: Stack) -> None:
    with stack.client() as c:
        account = register_and_login(c)
        before = stack.object_keys()
        refused = {
            "empty": (b"", 400),
            "not-an-image": (images.NOT_IMAGES[sorted(images.NOT_IMAGES)[0]], 415),
            "truncated": (images.jpeg(400, 300)[:3000], 422),
            "corrupt": (b"\x89PNG\r\n\x1a\n" + b"garbage" * 50, 422),
            "too-many-pixels": (images.png_header_only(8_000, 8_000), 422),
            "too-many-frames": (images.gif_many_frames(901), 422),
            "over-the-cap": (b"\xff\xd8\xff" + b"\0" * (40 * MIB + 1), 413),
        }
        for kind, (data, status) in refused.items():
            r = _upload(c, account, data)
            assert r.status_code == status, (kind, r.status_code, r.text)
            assert r.json()["error"], kind
        bad_visibility = _upload(c, account, images.jpeg(64, 64), visibility="secret")
        assert bad_visibility.status_code == 422
        info = c.get("/v1/user", headers=account.auth).json()
        assert (info["images"], info["bytes"]) == (0, 0)
    # Checked at once: a refusal is answered after its bytes are gone, not eventually.
    assert stack.object_keys() == before


def test_delete_removes_the_object_from_the_bucket(stack: Stack) -> None:
    with stack.client() as c:
        account = register_and_login(c)
        public = _upload(c, account, images.jpeg(64, 64, seed=1)).json()["filename"]
        private = _upload(c, account, images.jpeg(64, 64, seed=2), visibility="private")
        private_name = private.json()["filename"]
        keys = stack.object_keys()
        assert {f"public/{public}", f"private/{private_name}"} <= keys
        stems = (public.split(".")[0], private_name.split(".")[0])

        def variants() -> set[str]:
            return {
                k
                for k in stack.object_keys(variants=True)
                if k.count(".") == 2 and k.split("/")[1].split(".")[0] in stems
            }

        # The worker makes each image's 12 variants (4 presets x 3 formats) beside it.
        deadline = time.monotonic() + 60
        while len(variants()) < 24 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert {k.split("/")[0] for k in variants() if stems[0] in k} == {"public"}
        assert {k.split("/")[0] for k in variants() if stems[1] in k} == {"private"}
        assert len(variants()) == 24
        # Private variants are as unreadable to anonymous storage clients as their original.
        minio, bucket = stack.urls["minio"], stack.urls["bucket"]
        for key in variants():
            expected = 200 if key.startswith("public/") else 403
            assert httpx.get(f"{minio}/{bucket}/{key}").status_code == expected, key
        for name in (public, private_name):
            assert c.delete(f"/v1/images/{name}", headers=account.auth).status_code == 204
        assert stack.object_keys() == keys - {f"public/{public}", f"private/{private_name}"}
        assert variants() == set()  # answered after they are gone, not eventually


def test_made_private_an_image_takes_even_unrecorded_variants_off_the_public_side(
    stack: Stack,
) -> None:
    """A maker that died between storing a variant and recording it left an object on the
    public side: made private, the image takes it away too, not only its recorded variants."""
    with stack.client() as c:
        account = register_and_login(c)
        name = _upload(c, account, images.jpeg(64, 64, seed=4)).json()["filename"]
        stem = name.split(".")[0]

        def public_variants() -> set[str]:
            return {
                k
                for k in stack.object_keys(variants=True)
                if k.startswith(f"public/{stem}.") and k.count(".") == 2
            }

        _wait_until(lambda: len(public_variants()) == 12, "the image's 12 variants")
        with psycopg.connect(**{**stack_module().pg_admin(), "dbname": "imagegate"}) as conn:
            forgotten = conn.execute(
                "DELETE FROM variants WHERE name = %s RETURNING name", (f"{stem}.medium.webp",)
            ).fetchall()
        assert forgotten == [(f"{stem}.medium.webp",)]
        assert f"public/{stem}.medium.webp" in public_variants()  # an object without a record

        r = c.patch(f"/v1/images/{name}", json={"visibility": "private"}, headers=account.auth)
        assert r.status_code == 200, r.text
        assert public_variants() == set()  # answered after they are gone
        minio, bucket = stack.urls["minio"], stack.urls["bucket"]
        assert httpx.get(f"{minio}/{bucket}/public/{stem}.medium.webp").status_code in (403, 404)


def _restart_uploader(stack: Stack, name: str, env: dict[str, str] | None = None) -> None:
    stack.run("stop", name)
    stack.run("start", name, env=env)


def test_orphans_are_removed_at_start_after_the_grace_time(stack: Stack) -> None:
    grace = 10
    bucket = stack.urls["bucket"]
    s3 = stack.s3()
    with stack.client() as c:
        account = register_and_login(c)
        kept = _upload(c, account, images.jpeg(64, 64, seed=7)).json()["filename"]
    old_orphan = f"public/{uuid.uuid4()}.jpg"
    s3.put_object(Bucket=bucket, Key=old_orphan, Body=images.jpeg(32, 32), ContentType="image/jpeg")
    put_at = time.time()
    # Wait for the event itself: the object being older than the grace (by the clock that
    # start-up compares with, MinIO's LastModified).
    _wait_until(lambda: time.time() - put_at > grace + 1, "the orphan to age", timeout=grace + 30)
    young_orphan = f"private/{uuid.uuid4()}.png"
    s3.put_object(Bucket=bucket, Key=young_orphan, Body=b"young", ContentType="image/png")
    young_at = time.time()
    log_path = stack.state_dir / "logs" / "uploader-1.log"
    log_size = log_path.stat().st_size
    try:
        _restart_uploader(stack, "uploader-1", env={"IMAGEGATE_ORPHAN_GRACE_SECONDS": str(grace)})
        restarted_within = time.time() - young_at
        keys = stack.object_keys()
        assert old_orphan not in keys
        assert f"public/{kept}" in keys  # recorded images are never orphans, however old
        if restarted_within < grace - 1:  # still younger than the grace when start-up looked
            assert young_orphan in keys
        with open(log_path, "rb") as log:
            log.seek(log_size)
            assert b"had no record" in log.read()  # said so, in this start's lines
    finally:
        s3.delete_object(Bucket=bucket, Key=young_orphan)
        _restart_uploader(stack, "uploader-1")
    with stack.client() as c:
        assert c.get(f"/images/{kept}").status_code == 200


def test_storage_init_creates_a_bucket_with_anonymous_reads_of_public_only(stack: Stack) -> None:
    bucket = f"init-{uuid.uuid4().hex[:12]}"
    env = {**os.environ, **stack.env("uploader"), "IMAGEGATE_S3_BUCKET": bucket}
    s3 = stack.s3()
    admin = stack.state_dir / "admin"

    def init() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "imagegate", "storage", "init", "--data-dir", str(admin)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    try:
        first = init()
        assert first.returncode == 0, first.stderr
        assert init().returncode == 0  # again: nothing to do, no error
        s3.put_object(Bucket=bucket, Key="public/a.jpg", Body=b"public bytes")
        s3.put_object(Bucket=bucket, Key="private/b.jpg", Body=b"private bytes")
        minio = stack.urls["minio"]
        assert httpx.get(f"{minio}/{bucket}/public/a.jpg").content == b"public bytes"
        assert httpx.get(f"{minio}/{bucket}/private/b.jpg").status_code == 403
        assert httpx.get(f"{minio}/{bucket}?list-type=2").status_code == 403
        assert httpx.put(f"{minio}/{bucket}/public/c.jpg", content=b"x").status_code == 403
    finally:
        for key in ("public/a.jpg", "private/b.jpg"):
            s3.delete_object(Bucket=bucket, Key=key)
        s3.delete_bucket(Bucket=bucket)


def test_metrics_add_up_across_the_uploader_replicas(stack: Stack) -> None:
    replicas = stack.service_urls("uploader")

    def scrape() -> list[dict[tuple[str, frozenset[tuple[str, str]]], float]]:
        return [metric_samples(httpx.get(u + "/metrics", timeout=30).text) for u in replicas]

    with stack.client() as c:
        account = register_and_login(c)
        before = scrape()
        stored = 0
        for i in range(4):
            r = _upload(c, account, images.jpeg(48, 48, seed=20 + i))
            assert r.status_code == 201
            stored += r.json()["bytes"]
        for _ in range(3):
            assert _upload(c, account, b"not an image at all").status_code == 415
    after = scrape()

    def delta(name: str, **labels: str) -> float:
        return sum(
            metric(a, name, **labels) - metric(b, name, **labels)
            for a, b in zip(after, before, strict=True)
        )

    assert delta("imagegate_uploads_total", outcome="stored") == 4
    assert delta("imagegate_uploads_total", outcome="415") == 3
    route = {"route": "/v1/upload", "method": "POST"}
    assert delta("imagegate_http_requests_total", **route, status="201") == 4
    assert delta("imagegate_http_requests_total", **route, status="415") == 3
    assert delta("imagegate_upload_stored_bytes_total") == stored


def _files_of_size(folder: Path, size: int) -> bool:
    try:
        return any(p.stat().st_size == size for p in folder.iterdir())
    except FileNotFoundError:  # a file renamed or removed while we looked
        return False


TAIL = 16  # bytes after an image's end that make each upload's bytes its own


@pytest.mark.slow
def test_a_post_cut_off_by_a_dying_replica_is_not_replayed_on_another(stack: Stack) -> None:
    """NGINX may retry idempotent requests on the other replica; an upload must not be, or a
    replica that dies after storing would leave the client's one upload stored twice."""
    photo = images.encode(images.photo(3000, 2000), "PNG")  # about 2 s of codec work
    size = len(photo) + TAIL
    replicas = ("uploader-1", "uploader-2")
    tmp = {name: stack.state_dir / name / "tmp" for name in replicas}
    with stack.client() as c:
        account = register_and_login(c)
    keys_before = stack.object_keys()
    answers: list[tuple[str, int, dict[str, object]]] = []
    cut_off: tuple[str, str] | None = None  # (request id, the replica killed under it)
    try:
        for _ in range(8):
            rid = f"noretry-{uuid.uuid4().hex}"
            reply: list[httpx.Response | Exception] = []
            # Each attempt its own bytes (a tail after the PNG's end): the same bytes again
            # would be answered at once with the first attempt's image (200), never processed.
            data = photo + os.urandom(TAIL)

            def send(
                rid: str = rid, reply: list[httpx.Response | Exception] = reply, body: bytes = data
            ) -> None:
                try:
                    with stack.client(timeout=180) as c:
                        reply.append(
                            c.post(
                                "/v1/upload",
                                content=body,
                                headers={**account.auth, "X-Request-Id": rid},
                            )
                        )
                except httpx.HTTPError as exc:
                    reply.append(exc)

            sender = threading.Thread(target=send)
            sender.start()
            # Which replica has it: the one whose tmp/ holds the whole body, being processed.
            _wait_until(
                lambda t=sender: (
                    not t.is_alive() or any(_files_of_size(d, size) for d in tmp.values())
                ),
                "the body at a replica",
            )
            holder = next((n for n in replicas if _files_of_size(tmp[n], size)), None)
            if holder is not None:
                # SIGKILL at once, from here: a `stack kill` subprocess takes long enough to
                # start under load that the upload could finish first, every time.
                _kill_now(stack, holder)
            sender.join(180)
            assert not sender.is_alive()
            got = reply[0]
            assert isinstance(got, httpx.Response), got
            answers.append((rid, got.status_code, got.json()))
            if holder is not None and got.status_code != 201:
                cut_off = (rid, holder)
                break
            if holder is not None:  # it finished before the kill landed: bring it back
                stack.run("start", holder)
        assert cut_off is not None, f"no upload was cut off in 8 attempts: {answers}"
    finally:
        for name in replicas:
            stack.run("start", name)
    rid, killed = cut_off
    status, body = next((s, b) for r, s, b in answers if r == rid)
    assert status == 502, (status, body)  # the gateway's own error, not a replay's 201
    assert body["error"]
    stored = {str(b["filename"]) for _, s, b in answers if s == 201}
    with stack.client() as c:
        listed = c.get("/v1/images", headers=account.auth).json()["items"]
    assert {i["filename"] for i in listed} == stored  # nothing stored twice, nothing extra
    new_keys = stack.object_keys() - keys_before
    assert new_keys == {f"public/{name}" for name in stored}
    (other,) = set(replicas) - {killed}
    assert f"rid={rid}" not in (stack.state_dir / "logs" / f"{other}.log").read_text()


def _kill_now(stack: Stack, name: str) -> None:
    """SIGKILL a component's process group, as the stack's `kill` does, without its start-up."""
    pid = int((stack.state_dir / "run" / f"{name}.pid").read_text().split()[0])
    os.killpg(pid, signal.SIGKILL)
