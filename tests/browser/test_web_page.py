"""The web page in a real browser, as a person uses it, against embedded mode."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import Visit
from tests.support import images
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
    v = visit(server.base_url)
    page = v.page
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
    for i in range(2):
        assert (tiles.nth(i).get_attribute("src") or "").startswith("/images/thumb/")
    page.wait_for_function(
        "() => [...document.querySelectorAll('.grid img')]"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    v.step("gallery")

    # Open one; copy its URL; it is served publicly.
    tiles.first.click()
    expect(page.get_by_role("heading", name="Image")).to_be_visible()
    page.get_by_role("button", name="Copy URL").click()
    url = page.evaluate("navigator.clipboard.readText()")
    assert url.startswith(server.base_url + "/images/")
    assert httpx.get(url).status_code == 200
    v.step("image view")

    # Make it private: the public URL answers 404 at once (embedded mode has no cache).
    page.get_by_role("button", name="Make private").click()
    expect(page.locator("#visibility")).to_have_text("private")
    assert httpx.get(url).status_code == 404
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
        ["curl", "-sS", "-H", f"Authorization: Bearer {key}", f"{server.base_url}/v1/images"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert len(json.loads(listing.stdout)["items"]) == 1

    # Sign out: the back button brings back no private data.
    page.get_by_role("button", name="Sign out").click()
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
