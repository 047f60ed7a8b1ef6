"""Webhook URLs: what is accepted, what is refused and why, and where a request goes."""

from __future__ import annotations

import pytest

from imagegate.webhooks.delivery import InvalidURL, Target, parse_url


@pytest.mark.parametrize(
    ("url", "target"),
    [
        ("https://example.com/hook", Target("https", "example.com", 443, "/hook", "example.com")),
        ("http://Example.COM", Target("http", "example.com", 80, "/", "example.com")),
        (
            "https://example.com:8443/a/b?x=1&y=%20",
            Target("https", "example.com", 8443, "/a/b?x=1&y=%20", "example.com:8443"),
        ),
        ("HTTP://127.0.0.1:9000/h", Target("http", "127.0.0.1", 9000, "/h", "127.0.0.1:9000")),
        ("http://[::1]:81/", Target("http", "::1", 81, "/", "[::1]:81")),
        ("https://[2001:db8::1]/", Target("https", "2001:db8::1", 443, "/", "[2001:db8::1]")),
        (
            "https://bücher.example/x",
            Target("https", "xn--bcher-kva.example", 443, "/x", "xn--bcher-kva.example"),
        ),
    ],
)
def test_accepted_urls_and_their_targets(url: str, target: Target) -> None:
    assert parse_url(url) == target


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://example.com/", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("gopher://example.com/", "http:// or https://"),
        ("example.com/hook", "http:// or https://"),
        ("https://user:pw@example.com/", "user name or password"),
        ("https://user@example.com/", "user name or password"),
        ("https://example.com/a#frag", "fragment"),
        ("https://example.com/a b", "spaces or control"),
        ("https://example.com/\r\nX-Injected: 1", "spaces or control"),
        ("https://exa\x00mple.com/", "spaces or control"),
        ("https:///path-only", "no host"),
        ("https://example.com:99999/", "not a valid URL"),
        ("https://example.com:0/", "port 0"),
        ("https://[fe80::1%25eth0]/", "invalid host"),
        ("https://exa_mple!.com/", "invalid host name"),
        ("https://example.com/é", "ASCII"),
        ("https://" + "a" * 2050 + ".com/", "at most 2048"),
    ],
)
def test_refused_urls_say_why(url: str, why: str) -> None:
    with pytest.raises(InvalidURL, match=why):
        parse_url(url)
