"""A real browser (Debian's Chromium, driven by Playwright) against real servers.

Every page a test visits is checked the same way: the Content-Security-Policy header is the
strict one, no console error or uncaught exception happened, and axe-core (from npm, injected
into the page) finds no serious or critical accessibility violation. Screenshots of each step
go to ``.artifacts/browser/<test>/`` and stay there for CI to keep.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Page,
    Playwright,
    Request,
    Response,
    sync_playwright,
)

from imagegate.web.assets import CONTENT_SECURITY_POLICY

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / ".artifacts" / "browser"
CHROMIUM = "/usr/bin/chromium"
AXE_VERSION = "4.14.1"
HANDLED_REFUSAL = re.compile(r"Failed to load resource: the server responded with a status of 4")
AXE_CACHE = Path.home() / ".cache" / "imagegate" / f"axe-core-{AXE_VERSION}"


def axe_source() -> str:
    """axe-core's browser build, fetched once from npm (``npm pack`` checks its integrity)."""
    script = AXE_CACHE / "axe.min.js"
    if not script.exists():
        AXE_CACHE.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["npm", "pack", f"axe-core@{AXE_VERSION}", "--silent"],
            cwd=AXE_CACHE,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        tarball = AXE_CACHE / done.stdout.strip().splitlines()[-1]
        with tarfile.open(tarball) as tar:
            member = tar.getmember("package/axe.min.js")
            extracted = tar.extractfile(member)
            assert extracted is not None
            script.with_suffix(".part").write_bytes(extracted.read())
        script.with_suffix(".part").rename(script)
        tarball.unlink()
    return script.read_text()


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    # Per module, not per session: the sync API keeps an event loop running in this thread
    # while it is open, and later tests' asyncio.run() would refuse to start.
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    # Playwright's own browser download is not reachable here: the system's Chromium it is.
    # scripts/bootstrap installs it; a machine without it fails here, never skips.
    assert shutil.which(CHROMIUM), f"{CHROMIUM} is missing: run scripts/bootstrap (as root)"
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
    yield browser
    browser.close()


@dataclass
class Visit:
    """One test's page, with the checks every step gets."""

    page: Page
    folder: Path
    base_url: str
    errors: list[str] = field(default_factory=list)
    steps: int = 0
    # Every request made since the page was opened, and each finished one's transfer size
    # (headers and body as sent, compressed).
    requested: list[str] = field(default_factory=list)
    transfers: list[tuple[str, int]] = field(default_factory=list)

    def step(self, name: str, *, scan: bool = True) -> None:
        """A screenshot named for the step; then the console and (``scan``) axe-core checks."""
        self.steps += 1
        slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        self.page.screenshot(path=self.folder / f"{self.steps:02d}-{slug}.png", full_page=True)
        assert not self.errors, f"console errors by step {name!r}: {self.errors}"
        if scan:
            self.accessibility(name)

    def accessibility(self, where: str) -> None:
        # Through the debugging protocol, not a <script>: the page's CSP rightly refuses inline
        # scripts, and this test must not weaken it.
        self.page.evaluate(f"() => {{ {axe_source()}\n }}")
        result: dict[str, Any] = self.page.evaluate(
            "async () => await axe.run(document, {resultTypes: ['violations']})"
        )
        bad = [
            f"{v['id']} ({v['impact']}): {v['help']} — {[n['target'] for n in v['nodes']][:3]}"
            for v in result["violations"]
            if v["impact"] in ("serious", "critical")
        ]
        assert not bad, f"accessibility at {where!r}: {bad}"


@pytest.fixture
def visit(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Any]:
    """``visit(base_url)`` opens a fresh browser context (no cookies) on the page at ``/``."""
    contexts = []
    folder = ARTIFACTS / re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)

    def open_page(base_url: str, **options: Any) -> Visit:
        context = browser.new_context(base_url=base_url, **options)
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base_url)
        contexts.append(context)
        page = context.new_page()
        visit = Visit(page, folder, base_url)

        def on_console(message: ConsoleMessage) -> None:
            # The browser logs every 4xx answer to a fetch as an error: those are the API's
            # refusals the page shows (a text file's 415, no session to resume), not faults.
            if message.type == "error" and not HANDLED_REFUSAL.match(message.text):
                visit.errors.append(message.text)

        def on_response(response: Response) -> None:
            if response.status >= 500:
                visit.errors.append(f"{response.status} from {response.url}")

        def on_finished(request: Request) -> None:
            sizes = request.sizes()
            size = sizes["responseBodySize"] + sizes["responseHeadersSize"]
            visit.transfers.append((request.url, size))

        page.on("console", on_console)
        page.on("response", on_response)
        page.on("request", lambda request: visit.requested.append(request.url))
        page.on("requestfinished", on_finished)
        page.on("pageerror", lambda exc: visit.errors.append(f"uncaught: {exc}"))
        response = page.goto("/")
        assert response is not None and response.status == 200
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["x-frame-options"] == "DENY"
        return visit

    yield open_page
    for context in contexts:
        context.close()
