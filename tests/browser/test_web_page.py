"""The web page in a real browser, as a person uses it, against embedded mode."""

from __future__ import annotations

import json
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tests.conftest import Account, register_and_login
from tests.support import images
from tests.support.browser import Visit
from tests.support.server import ServerProcess

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("web") / "data").start()
    yield proc
    proc.stop()


def sign_up(visit: Visit, login: str) -> None:
    page = visit.page
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    visit.step("sign in form")
    page.get_by_role("link", name="Create an account").click()
    expect(page.get_by_role("heading", name="Create an account")).to_be_visible()
    page.get_by_label("Login").fill(login)
    page.get_by_label("Password").fill("short")
    page.get_by_role("button", name="Sign up").click()
    # The password policy's message, as the API words it.
    expect(page.get_by_role("alert")).to_contain_text("password must be at least")
    visit.step("policy message")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("heading", name="Your images")).to_be_visible()
    expect(page.get_by_text("No images yet")).to_be_visible()
    visit.step("empty gallery")


def test_a_person_signs_up_uploads_shares_and_signs_out(
    server: ServerProcess, visit: Callable[..., Visit], tmp_path: Path
) -> None:
    journey(visit(server.base_url), tmp_path, public_url_gone_within=0)


def journey(
    v: Visit,
    tmp_path: Path,
    *,
    public_url_gone_within: float,
    verify: ssl.SSLContext | bool = True,
    curl_options: Sequence[str] = (),
) -> None:
    """The whole path, step by step with a screenshot each; ``verify`` and ``curl_options``
    are for the checks made outside the browser (httpx, curl) against the same server."""
    page = v.page
    base_url = v.base_url
    login = f"web-{uuid.uuid4().hex[:10]}"
    sign_up(v, login)

    # Upload three files, one of them text: its reason is shown, the others are stored.
    files = {
        "red.png": images.encode(images.photo(800, 600, seed=1), "PNG"),
        "blue.jpg": images.jpeg(900, 700),
        "notes.txt": b"not an image at all\n",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    page.get_by_role("navigation").get_by_role("link", name="Upload").click()
    expect(page.get_by_role("heading", name="Upload")).to_be_visible()
    page.locator("input[type=file]").set_input_files([str(tmp_path / n) for n in files])
    uploads = page.get_by_role("list", name="Uploads")
    expect(uploads.locator("li.done")).to_have_count(2, timeout=60_000)
    failed = uploads.locator("li.failed")
    expect(failed).to_have_count(1)
    expect(failed).to_contain_text("notes.txt")
    expect(failed).to_contain_text("not an image of an accepted type")
    v.step("uploaded")

    # The gallery: two thumbnails, the thumb variant.
    page.get_by_role("navigation").get_by_role("link", name="Gallery").click()
    tiles = page.get_by_role("list", name="Your images").locator("img")
    expect(tiles).to_have_count(2)
    page.wait_for_function(
        "() => [...document.querySelectorAll('.grid img')]"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    for i in range(2):
        assert (tiles.nth(i).get_attribute("src") or "").startswith("/images/thumb/")
    v.step("gallery")

    # Open one; copy its URL; it is served publicly.
    tiles.first.click()
    expect(page.get_by_role("heading", name="Image")).to_be_visible()
    page.wait_for_function(  # the picture itself, at screen size
        "() => { const i = document.querySelector('img.full');"
        " return i && i.complete && i.naturalWidth > 0; }"
    )
    page.get_by_role("button", name="Copy URL").click()
    url = page.evaluate("navigator.clipboard.readText()")
    assert url.startswith(base_url + "/images/")
    assert httpx.get(url, verify=verify).status_code == 200
    v.step("image view")

    # Make it private: the public URL answers 404 (at once in embedded mode; the gateway's
    # cache checks with storage every 10 s).
    page.get_by_role("button", name="Make private").click()
    expect(page.locator("#visibility")).to_have_text("private")
    deadline = time.monotonic() + public_url_gone_within
    while (status := httpx.get(url, verify=verify).status_code) != 404:
        assert time.monotonic() < deadline, f"{url}: {status} after it was made private"
        time.sleep(0.25)
    v.step("private")

    # Delete it, after a confirmation.
    page.get_by_role("button", name="Delete…").click()
    page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    expect(page.get_by_role("heading", name="Your images")).to_be_visible()
    expect(page.get_by_role("list", name="Your images").locator("img")).to_have_count(1)
    v.step("deleted")

    # An API key, shown once, works with curl.
    page.get_by_role("navigation").get_by_role("link", name="Account").click()
    expect(page.get_by_role("heading", name="Account")).to_be_visible()
    page.get_by_label("Name").fill("script")
    page.get_by_role("button", name="Create key").click()
    key = page.locator("#new-key").inner_text()
    assert key.startswith("igk_")
    v.step("api key")
    listing = subprocess.run(
        [
            "curl",
            "-sS",
            *curl_options,
            "-H",
            f"Authorization: Bearer {key}",
            f"{base_url}/v1/images",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert len(json.loads(listing.stdout)["items"]) == 1

    # Sign out: the back button brings back no private data.
    page.get_by_role("button", name="Sign out", exact=True).click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.go_back()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert login not in page.content()
    assert page.locator("img[src^='blob:'], .grid").count() == 0
    v.step("signed out")
    # And the session cannot be resumed from the cookie.
    page.reload()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    v.step("reloaded")


@pytest.fixture(scope="module")
def gallery_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server with only the thumb preset: 200 uploads make 200 x 3 small files."""
    env = {"IMAGEGATE_VARIANT_PRESETS": "thumb=320x320:cover"}
    proc = ServerProcess(tmp_path_factory.mktemp("gallery") / "data", env=env).start()
    yield proc
    proc.stop()


def sign_in(visit: Visit, account: Account) -> None:
    page = visit.page
    page.get_by_label("Login").fill(account.login)
    page.get_by_label("Password").fill(account.password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Your images")).to_be_visible()


def test_the_first_load_is_small_and_a_long_gallery_fetches_only_what_is_in_view(
    gallery_server: ServerProcess, visit: Callable[..., Visit]
) -> None:
    with httpx.Client(base_url=gallery_server.base_url, timeout=60) as c:
        account = register_and_login(c)
        for i in range(200):
            r = c.post(
                "/v1/upload",
                content=images.encode(images.photo(128, 128, seed=i), "PNG"),
                headers=account.auth,
            )
            assert r.status_code == 201, r.text
    v = visit(gallery_server.base_url, viewport={"width": 1280, "height": 720})
    page = v.page
    sign_in(v, account)
    tiles = page.locator(".grid img")
    expect(tiles).to_have_count(50)  # the listing's first page
    # The thumbnails in view arrive; then nothing more is asked for.
    page.wait_for_function(
        "() => { const seen = [...document.querySelectorAll('.grid img')]"
        ".filter(i => i.getBoundingClientRect().top < innerHeight);"
        " return seen.length > 0 && seen.every(i => i.complete && i.naturalWidth > 0); }"
    )
    page.wait_for_load_state("networkidle")
    thumbs = [url for url in v.requested if "/images/thumb/" in url]
    # Only the thumbnails within half a screen of the view were asked for.
    near = page.evaluate(
        "() => [...document.querySelectorAll('.grid img')]"
        ".filter(i => i.getBoundingClientRect().top < innerHeight * 1.5).length"
    )
    assert 0 < len(thumbs) <= near < 50, (len(thumbs), near)
    # The whole first load, from the document on, compressed, images aside.
    page_bytes = sum(size for url, size in v.transfers if "/images/" not in url)
    assert 10_000 < page_bytes <= 100_000, page_bytes
    v.step("long gallery")
    # Scrolling to the end loads the next pages of the listing, 200 in all.
    deadline = time.monotonic() + 60
    while tiles.count() < 200 and time.monotonic() < deadline:
        page.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")
        page.wait_for_timeout(250)  # the observer reports at the next frame, then fetches
    status = page.locator("section > p.hint").inner_text()
    assert tiles.count() == 200, (tiles.count(), status, v.errors)
    page.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.grid img')].slice(-10)"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    v.step("end of the gallery")


def test_keyboard_phone_width_and_dark_mode(
    server: ServerProcess, visit: Callable[..., Visit]
) -> None:
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        account = register_and_login(c)
    v = visit(server.base_url, viewport={"width": 375, "height": 740}, color_scheme="dark")
    page = v.page
    # Signed in with the keyboard alone; every focused control shows an outline.
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.keyboard.type(account.login)  # the login field has the focus
    page.keyboard.press("Tab")
    page.keyboard.type(account.password)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Your images")).to_be_visible()
    outlines = []
    for _ in range(6):  # past the last control, the focus leaves the page (body)
        page.keyboard.press("Tab")
        outlines.append(
            page.evaluate(
                "() => document.activeElement === document.body ? ['', 'page'] :"
                " [document.activeElement.textContent.trim(),"
                " getComputedStyle(document.activeElement).outlineStyle]"
            )
        )
    assert all(style != "none" for _, style in outlines), outlines
    assert "Upload" in [text for text, _ in outlines]
    while page.evaluate("() => document.activeElement.textContent.trim()") != "Upload":
        page.keyboard.press("Shift+Tab")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Upload")).to_be_visible()
    # Phone width: nothing wider than the screen; the system's dark preference is followed.
    for route in ("#/upload", "#/account", "#/gallery"):
        page.evaluate(f"location.hash = '{route}'")
        page.wait_for_load_state("networkidle")
        assert page.evaluate("() => document.documentElement.scrollWidth <= innerWidth"), route
    background = page.evaluate("() => getComputedStyle(document.body).backgroundColor")
    assert background == "rgb(20, 21, 24)", background
    v.step("phone dark")


def test_files_dropped_or_pasted_are_uploaded(
    server: ServerProcess, visit: Callable[..., Visit]
) -> None:
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        account = register_and_login(c)
    v = visit(server.base_url)
    page = v.page
    sign_in(v, account)
    page.get_by_role("navigation").get_by_role("link", name="Upload").click()
    page.get_by_label("Only me").check()
    pngs = [list(images.encode(images.photo(200, 150, seed=s), "PNG")) for s in (7, 8)]
    # A drop and a paste, as the browser delivers them: events carrying a DataTransfer.
    page.evaluate(
        """([one, two]) => {
            const file = (bytes, name) =>
                new File([new Uint8Array(bytes)], name, {type: 'image/png'});
            const dropped = new DataTransfer();
            dropped.items.add(file(one, 'dropped.png'));
            const zone = document.querySelector('.dropzone');
            zone.dispatchEvent(new DragEvent('drop', {dataTransfer: dropped, bubbles: true}));
            const pasted = new DataTransfer();
            pasted.items.add(file(two, 'pasted.png'));
            document.dispatchEvent(
                new ClipboardEvent('paste', {clipboardData: pasted, bubbles: true}));
        }""",
        pngs,
    )
    uploads = page.get_by_role("list", name="Uploads")
    expect(uploads.locator("li.done")).to_have_count(2, timeout=60_000)
    expect(uploads).to_contain_text("dropped.png")
    expect(uploads).to_contain_text("pasted.png")
    v.step("dropped and pasted")
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        items = c.get("/v1/images", headers=account.auth).json()["items"]
    assert [i["visibility"] for i in items] == ["private", "private"]


def test_refusals_are_shown_as_the_api_words_them(
    tmp_path: Path, visit: Callable[..., Visit]
) -> None:
    """A webhook to an internal address shows why it is refused; an accepted one shows its
    secret once and lists its deliveries; a throttled sign-in shows how long to wait."""
    env = {
        "IMAGEGATE_LOGIN_MAX_FAILURES": "2",
        "IMAGEGATE_WEBHOOK_ALLOWED_NETWORKS": "127.0.0.2/32",  # one receiver address allowed
    }
    server = ServerProcess(tmp_path / "data", env=env).start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=60) as c:
            account = register_and_login(c)
        v = visit(server.base_url)
        page = v.page
        sign_in(v, account)
        page.get_by_role("navigation").get_by_role("link", name="Account").click()
        webhooks = page.get_by_role("region", name="Webhooks")
        webhooks.get_by_label("Address").fill("http://127.0.0.1:9/hook")
        webhooks.get_by_role("button", name="Add webhook").click()
        expect(webhooks.get_by_role("alert")).to_contain_text("loopback")
        v.step("webhook refused")
        webhooks.get_by_label("Address").fill("http://127.0.0.2:9/hook")
        webhooks.get_by_role("button", name="Add webhook").click()
        expect(webhooks).to_contain_text("whsec_")
        expect(webhooks.get_by_role("list", name="Webhooks")).to_contain_text("127.0.0.2")
        webhooks.get_by_role("button", name="Recent deliveries").click()
        expect(webhooks.locator(".deliveries li")).not_to_have_count(0)
        v.step("webhook added")

        page.get_by_role("button", name="Sign out", exact=True).click()
        for _ in range(3):
            page.get_by_label("Login").fill(account.login)
            page.get_by_label("Password").fill("not the password")
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("alert")).not_to_be_empty()
        expect(page.get_by_role("alert")).to_contain_text("try again in")
        v.step("throttled")
    finally:
        server.stop()


def test_password_change_and_signing_out_everywhere(
    server: ServerProcess, visit: Callable[..., Visit]
) -> None:
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        account = register_and_login(c)
    v = visit(server.base_url)
    page = v.page
    sign_in(v, account)
    page.get_by_role("navigation").get_by_role("link", name="Account").click()
    password = page.get_by_role("region", name="Password")
    password.get_by_label("Current password").fill("not my password")
    password.get_by_label("New password").fill("a much better passphrase 42")
    password.get_by_role("button", name="Change password").click()
    expect(password.get_by_role("alert")).to_contain_text("wrong password")
    expect(page.get_by_role("heading", name="Account")).to_be_visible()  # still signed in
    password.get_by_label("Current password").fill(account.password)
    password.get_by_role("button", name="Change password").click()
    expect(page.locator("#status")).to_contain_text("Password changed")
    v.step("password changed")
    # The session goes on after a reload (the new refresh cookie); the old password is dead.
    page.reload()
    expect(page.get_by_role("heading", name="Account")).to_be_visible()
    with httpx.Client(base_url=server.base_url, timeout=60) as c:
        old = c.post("/v1/token", json={"login": account.login, "password": account.password})
        assert old.status_code == 401
    page.get_by_role("navigation").get_by_role("link", name="Account").click()
    page.get_by_role("button", name="Sign out everywhere").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    page.reload()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    v.step("signed out everywhere")
