"""The browser fixtures (tests/support/browser.py): Debian's Chromium driven by Playwright."""

from tests.support.browser import browser, playwright, visit

__all__ = ["browser", "playwright", "visit"]
