"""Variants in embedded mode: made after the upload, signed custom sizes and key rotation, one
job for many concurrent first requests, deletion with the account, and the rebuild command."""

from __future__ import annotations

import asyncio
import io
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.conftest import Account, register_and_login
from tests.support import images
from tests.support.cli import imagegate
from tests.support.server import ServerProcess

OLD_KEY, NEW_KEY = "old-signing-key-0123456789", "new-signing-key-9876543210"
DEFAULT_FILES = 4 * 3  # presets x (AVIF, WebP, the original's format)


def wait_until(check: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def variant_files(data: Path, name: str) -> set[str]:
    return {p.name for p in (data / "images").glob(f"{name.split('.')[0]}.*.*")}


def variant_records(data: Path, name: str) -> int:
    with sqlite3.connect(data / "imagegate.db") as db:
        row = db.execute("SELECT count(*) FROM variants WHERE image_name = ?", (name,)).fetchone()
    return int(row[0])


def metric(client: httpx.Client, name: str, labels: str = "") -> float:
    pattern = re.compile(rf"^{name}{re.escape('{' + labels + '}') if labels else ''} (\S+)$", re.M)
    found = pattern.search(client.get("/metrics").text)
    return float(found.group(1)) if found else 0.0


def size_of(body: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(body)) as img:
        return img.size


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = {"IMAGEGATE_VARIANT_SIGNING_KEYS": f"{NEW_KEY},{OLD_KEY}"}
    proc = ServerProcess(tmp_path_factory.mktemp("variants") / "data", env=env).start()
    yield proc
    proc.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        yield c


def upload(client: httpx.Client, account: Account, **params: str) -> str:
    # Each upload its own bytes (a tail after the JPEG's end): the same bytes again would be
    # the account's first image (200), not a new one.
    data = images.jpeg(900, 600) + os.urandom(16)
    r = client.post("/v1/upload", content=data, headers=account.auth, params=params)
    assert r.status_code == 201, r.text
    return str(r.json()["filename"])


def test_every_preset_is_made_after_the_upload_without_a_request(
    server: ServerProcess, client: httpx.Client
) -> None:
    account = register_and_login(client)
    on_demand = metric(client, "imagegate_variant_jobs_total", 'trigger="on_demand"')
    name = upload(client, account)
    wait_until(lambda: len(variant_files(server.data_dir, name)) == DEFAULT_FILES, "12 files")
    # The files are stored before their records are committed: wait for those too.
    wait_until(lambda: variant_records(server.data_dir, name) == DEFAULT_FILES, "12 records")
    stem = name.split(".")[0]
    assert variant_files(server.data_dir, name) == {
        f"{stem}.{preset}.{ext}"
        for preset in ("thumb", "small", "medium", "large")
        for ext in ("avif", "webp", "jpg")
    }
    r = client.get(f"/images/thumb/{name}", headers={"Accept": "image/avif"})
    assert r.status_code == 200 and r.headers["Content-Type"] == "image/avif"
    # Served from what the upload's job made: no job on demand.
    assert metric(client, "imagegate_variant_jobs_total", 'trigger="on_demand"') == on_demand
    # Never upscaled: "large" (2048) of a 900 x 600 original is the original's size.
    large = client.get(f"/images/large/{name}")
    assert size_of(large.content) == (900, 600)


def _sign(key: str, name: str, w: int, h: int, fit: str) -> str:
    done = imagegate(
        "variants",
        "sign",
        name,
        "--width",
        str(w),
        "--height",
        str(h),
        "--fit",
        fit,
        env={"IMAGEGATE_VARIANT_SIGNING_KEYS": key},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_signed_custom_sizes_and_key_rotation(client: httpx.Client) -> None:
    account = register_and_login(client)
    name = upload(client, account)
    new = _sign(NEW_KEY, name, 150, 100, "cover")
    assert new.startswith(f"/images/size/{name}?w=150&h=100&fit=cover&sig=")
    r = client.get(new)
    assert r.status_code == 200, r.text
    assert size_of(r.content) == (150, 100)
    assert "accept" in r.headers["Vary"].lower()
    # A URL signed with the previous key still works while that key is listed...
    assert client.get(_sign(OLD_KEY, name, 150, 100, "cover")).status_code == 200
    # ...and one signed with a key the server does not hold (retired) does not.
    retired = client.get(_sign("retired-signing-key-000000", name, 150, 100, "cover"))
    assert retired.status_code == 403 and "signature" in retired.json()["error"]
    # Tampering with any parameter breaks the signature.
    for tampered in (
        new.replace("w=150", "w=151"),
        new.replace("fit=cover", "fit=contain"),
        new.replace(name, upload(client, account)),
        new[:-2] + ("AA" if not new.endswith("AA") else "BB"),
    ):
        r = client.get(tampered)
        assert r.status_code == 403, tampered
        assert r.json()["error"]
    # Oversize is refused before the signature is looked at; so is a signature that cannot be
    # one (not base64url), whatever its characters.
    assert client.get(f"/images/size/{name}?w=5000&h=10&sig=x").status_code == 422
    for junk in ("%C3%A9", "a%00b", "x" * 129):
        r = client.get(f"/images/size/{name}?w=100&sig={junk}")
        assert r.status_code == 422 and r.json()["error"], junk


def test_an_images_custom_sizes_are_bounded(server: ServerProcess, client: httpx.Client) -> None:
    account = register_and_login(client)
    name = upload(client, account)
    stem = name.split(".")[0]
    for width in range(10, 10 + 36):
        r = client.get(f"/v1/user/size/{name}?w={width}", headers=account.auth)
        assert r.status_code == 200 and size_of(r.content)[0] == width
    custom = {f for f in variant_files(server.data_dir, name) if f[len(stem) + 1].isdigit()}
    assert len(custom) == 32  # the least recently used went; the newest are there
    assert f"{stem}.45x4096n.jpg" in custom and f"{stem}.10x4096n.jpg" not in custom
    again = client.get(f"/v1/user/size/{name}?w=10", headers=account.auth)
    assert again.status_code == 200 and size_of(again.content)[0] == 10  # made again


def test_fifty_concurrent_first_requests_make_one_variant(client: httpx.Client) -> None:
    account = register_and_login(client)
    name = upload(client, account)
    before = metric(client, "imagegate_variant_jobs_total", 'trigger="on_demand"')
    url = f"/v1/user/size/{name}?w=333&h=222&fit=cover"

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=str(client.base_url), timeout=120) as c:
            return await asyncio.gather(*(c.get(url, headers=account.auth) for _ in range(50)))

    answers = asyncio.run(burst())
    assert [r.status_code for r in answers] == [200] * 50
    assert len({r.content for r in answers}) == 1 and size_of(answers[0].content) == (333, 222)
    assert metric(client, "imagegate_variant_jobs_total", 'trigger="on_demand"') == before + 1


def test_an_image_deleted_while_its_variants_are_made_is_a_404(
    server: ServerProcess, client: httpx.Client
) -> None:
    """Sizes being made when their image is deleted answer 404 (its bytes vanish under the
    maker: that is "gone", not a server error) and leave no file behind."""
    account = register_and_login(client)
    r = client.post(
        "/v1/upload",
        content=images.encode(images.photo(3000, 2000), "PNG"),
        headers=account.auth,
        params={"visibility": "private"},
    )
    assert r.status_code == 201, r.text
    name = r.json()["filename"]
    jobs = 'trigger="on_demand"'
    before = metric(client, "imagegate_variant_jobs_total", jobs)

    async def race() -> list[int]:
        async with httpx.AsyncClient(base_url=str(client.base_url), timeout=120) as c:
            sizes = [
                asyncio.create_task(c.get(f"/v1/user/size/{name}?w={w}", headers=account.auth))
                for w in range(200, 212)
            ]
            deadline = time.monotonic() + 60
            while metric(client, "imagegate_variant_jobs_total", jobs) == before:
                assert time.monotonic() < deadline, "no variant job started"
                await asyncio.sleep(0.02)
            gone = await c.delete(f"/v1/images/{name}", headers=account.auth)
            assert gone.status_code == 204, gone.text
            return [r.status_code for r in await asyncio.gather(*sizes)]

    statuses = asyncio.run(race())
    assert set(statuses) <= {200, 404}, statuses
    assert 404 in statuses
    wait_until(lambda: not variant_files(server.data_dir, name), "no variant left")


def test_deleting_the_account_removes_every_variant(
    server: ServerProcess, client: httpx.Client
) -> None:
    account = register_and_login(client)
    names = [upload(client, account), upload(client, account, visibility="private")]
    for name in names:
        wait_until(lambda n=name: len(variant_files(server.data_dir, n)) == DEFAULT_FILES, "made")
    custom = client.get(f"/v1/user/size/{names[1]}?w=50", headers=account.auth)
    assert custom.status_code == 200
    r = client.request(
        "DELETE", "/v1/user", json={"password": account.password}, headers=account.auth
    )
    assert r.status_code == 204, r.text
    for name in names:
        wait_until(lambda n=name: not variant_files(server.data_dir, n), "variants removed")


def test_rebuild_makes_what_is_missing_and_what_a_preset_change_outdated(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    only_thumb = {"IMAGEGATE_VARIANT_PRESETS": "thumb=320x320:cover"}
    server = ServerProcess(data, env=only_thumb).start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as c:
            account = register_and_login(c)
            names = [upload(c, account) for _ in range(2)]
            for name in names:
                wait_until(lambda n=name: len(variant_files(data, n)) == 3, "thumbs")
        # Beside a running server on its folder: refused, with the reason.
        busy = imagegate("variants", "rebuild", "--data-dir", str(data))
        assert busy.returncode != 0 and "a server is using" in busy.stderr
    finally:
        server.stop()
    # The default presets: small, medium and large are missing (3 formats each).
    done = imagegate("variants", "rebuild", "--data-dir", str(data), "--jobs", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "2 images checked, 18 variants made"
    assert all(len(variant_files(data, n)) == DEFAULT_FILES for n in names)
    again = imagegate("variants", "rebuild", "--data-dir", str(data))
    assert again.stdout.splitlines()[-1] == "2 images checked, 0 variants made"
    # The thumb preset changes size: only the thumbs are made again.
    smaller = {"IMAGEGATE_VARIANT_PRESETS": "thumb=100x100:cover"}
    redo = imagegate(
        "variants", "rebuild", "--data-dir", str(data), "--preset", "thumb", env=smaller
    )
    assert redo.stdout.splitlines()[-1] == "2 images checked, 6 variants made", redo.stderr
    thumb = data / "images" / f"{names[0].split('.')[0]}.thumb.jpg"
    assert size_of(thumb.read_bytes()) == (100, 100)
    unknown = imagegate("variants", "rebuild", "--data-dir", str(data), "--preset", "nope")
    assert unknown.returncode != 0 and "no such preset" in unknown.stderr
    # Presets removed from the settings: their variants go (records and files), others stay.
    fewer = {"IMAGEGATE_VARIANT_PRESETS": "thumb=100x100:cover,small=640x640"}
    trimmed = imagegate("variants", "rebuild", "--data-dir", str(data), env=fewer)
    assert trimmed.returncode == 0, trimmed.stderr
    summary = "2 images checked, 0 variants made, 12 of removed presets removed"
    assert trimmed.stdout.splitlines()[-1] == summary
    for name in names:
        keys = {f.split(".")[1] for f in variant_files(data, name)}
        assert keys == {"thumb", "small"} and len(variant_files(data, name)) == 6


def test_unused_custom_sizes_are_removed_and_presets_kept(tmp_path: Path) -> None:
    keep = {"IMAGEGATE_VARIANT_CUSTOM_KEEP_DAYS": "0.00003"}  # 2.6 s
    server = ServerProcess(tmp_path / "data", env=keep).start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as c:
            account = register_and_login(c)
            name = upload(c, account)
            wait_until(lambda: len(variant_files(server.data_dir, name)) == DEFAULT_FILES, "made")
            url = f"/v1/user/size/{name}?w=120"
            assert c.get(url, headers=account.auth).status_code == 200
            custom = f"{name.split('.')[0]}.120x4096n.jpg"
            assert custom in variant_files(server.data_dir, name)
            wait_until(lambda: custom not in variant_files(server.data_dir, name), "pruned", 30)
            assert len(variant_files(server.data_dir, name)) == DEFAULT_FILES  # presets stay
            # Asked for again: made again.
            again = c.get(url, headers=account.auth)
            assert again.status_code == 200 and size_of(again.content)[0] == 120
    finally:
        server.stop()


def test_uploads_hold_back_the_variant_workers_and_variants_are_still_made(
    server: ServerProcess, client: httpx.Client
) -> None:
    """While an upload is in progress the variant workers are stopped (variants/yielding.py),
    counted at /metrics; every image still gets all its variants."""
    account = register_and_login(client)
    first = upload(client, account)  # its job starts the variant workers, if not yet running
    wait_until(lambda: variant_records(server.data_dir, first) == DEFAULT_FILES, "first's")
    paused = metric(client, "imagegate_variant_workers_paused_seconds_total")
    names = [upload(client, account) for _ in range(3)]
    assert metric(client, "imagegate_variant_workers_paused_seconds_total") > paused
    for name in names:
        wait_until(lambda n=name: variant_records(server.data_dir, n) == DEFAULT_FILES, name)


def test_variants_made_only_when_asked_for(tmp_path: Path) -> None:
    """IMAGEGATE_VARIANTS_AFTER_UPLOAD=false: the upload's event makes nothing; the first
    request makes the one variant it asks for."""
    env = {"IMAGEGATE_VARIANTS_AFTER_UPLOAD": "false"}
    server = ServerProcess(tmp_path / "data", env=env).start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as c:
            name = upload(c, register_and_login(c))
            stored = 'outcome="ok",type="imagegate.image.stored"'
            wait_until(lambda: metric(c, "imagegate_events_handled_total", stored) == 1, "event")
            assert metric(c, "imagegate_variant_jobs_total", 'trigger="upload"') == 0
            assert variant_files(server.data_dir, name) == set()
            r = c.get(f"/images/thumb/{name}", headers={"Accept": "image/webp"})
            assert r.status_code == 200 and r.headers["Content-Type"] == "image/webp"
            assert size_of(r.content) == (320, 320)
            assert metric(c, "imagegate_variant_jobs_total", 'trigger="on_demand"') == 1
            assert variant_files(server.data_dir, name) == {f"{name.split('.')[0]}.thumb.webp"}
    finally:
        server.stop()
