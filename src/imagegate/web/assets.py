"""The web page's files, named by their content so browsers may keep them for a year.

``static/`` holds plain files, no build step: ``index.html``, stylesheets and JavaScript
modules. At start (or for ``imagegate web export``) each asset gets a name with the first hex
digits of its sha256 (``js/app.1a2b3c4d.js``), the references to it are rewritten in
``index.html`` and in the modules that import it, and the bodies are gzipped once. A module's
name covers the modules it imports (hashed in dependency order), so changing one file renames
every file that leads to it and no browser mixes old and new code. ``index.html`` itself keeps
its name and is revalidated on every load.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

STATIC = Path(__file__).with_name("static")
ASSETS_PREFIX = "/assets/"
HASH_DIGITS = 10
TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
    ".html": "text/html; charset=utf-8",
}
# `import … from "./x.js"`, `import "./x.js"`, `export … from "./x.js"`: modules import only
# their neighbours in the same folder (there is nothing else: no packages, no CDN).
_IMPORT = re.compile(r"""(\b(?:from|import)\s*)(["'])\./([A-Za-z0-9_.-]+\.js)\2""")
_ANY_IMPORT = re.compile(r"""\b(?:from|import)\s*["']([^"']+)["']""")
_REFERENCE = re.compile(rf"""(["']){re.escape(ASSETS_PREFIX)}([A-Za-z0-9_./-]+)\1""")

# Every page: only this origin's scripts, styles and connections; images also from blob: URLs
# (private images are fetched with the token and shown from memory); never framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
}


@dataclass(frozen=True)
class Asset:
    """One file as served: its public path, body, gzipped body and type."""

    path: str  # under /assets/, e.g. "js/app.1a2b3c4d5e.js"; "index.html" for the page
    body: bytes
    gzipped: bytes
    content_type: str
    etag: str  # quoted, from the body's sha256


@dataclass(frozen=True)
class Site:
    """The page and its assets by public path."""

    index: Asset
    assets: dict[str, Asset]

    def export(self, folder: Path) -> list[Path]:
        """Write the site for a static file server (the gateway): ``index.html``, ``assets/…``
        with a ``.gz`` beside each file (NGINX's ``gzip_static``), and ``page-headers.conf``,
        the page's headers as NGINX ``add_header`` lines."""
        written = []
        for asset in (self.index, *self.assets.values()):
            target = folder / ("index.html" if asset is self.index else f"assets/{asset.path}")
            target.parent.mkdir(parents=True, exist_ok=True)
            for path, data in ((target, asset.body), (Path(f"{target}.gz"), asset.gzipped)):
                path.write_bytes(data)
                written.append(path)
        headers = folder / "page-headers.conf"
        headers.write_text(
            "".join(f'add_header {k} "{v}" always;\n' for k, v in PAGE_HEADERS.items())
        )
        written.append(headers)
        return written


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:HASH_DIGITS]


def _hashed_name(relative: str, data: bytes) -> str:
    stem, dot, ext = relative.rpartition(".")
    return f"{stem}.{_digest(data)}{dot}{ext}"


def _asset(path: str, body: bytes) -> Asset:
    kind = TYPES.get(Path(path).suffix, "application/octet-stream")
    # mtime=0: the same input always gives the same bytes (and ETags across replicas).
    return Asset(path, body, gzip.compress(body, 9, mtime=0), kind, f'"{_digest(body)}"')


def build(root: Path = STATIC) -> Site:
    """Hash, rewrite and compress every file under ``root``."""
    sources = {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "index.html"
    }
    names: dict[str, str] = {}  # source path -> hashed path

    def resolve(relative: str, seen: tuple[str, ...] = ()) -> str:
        if relative in names:
            return names[relative]
        if relative in seen:
            raise ValueError(f"import cycle: {' -> '.join((*seen, relative))}")
        if relative not in sources:
            raise ValueError(f"{seen[-1] if seen else 'index.html'} refers to missing {relative}")
        body = sources[relative]
        if relative.endswith(".js"):
            folder = relative.rpartition("/")[0]

            text = body.decode()
            for m in _ANY_IMPORT.finditer(text):
                if not _IMPORT.fullmatch(m.group(0)):
                    raise ValueError(f"{relative}: import {m.group(1)!r} is not ./name.js")

            def rewrite(m: re.Match[str]) -> str:
                hashed = resolve(_join(folder, m.group(3)), (*seen, relative))
                return f"{m.group(1)}{m.group(2)}./{hashed.rpartition('/')[2]}{m.group(2)}"

            body = _IMPORT.sub(rewrite, text).encode()
            sources[relative] = body
        names[relative] = _hashed_name(relative, body)
        return names[relative]

    for relative in sources:
        resolve(relative)
    assets = {names[r]: _asset(names[r], sources[r]) for r in sources}

    def reference(m: re.Match[str]) -> str:
        return f"{m.group(1)}{ASSETS_PREFIX}{resolve(m.group(2))}{m.group(1)}"

    page = _REFERENCE.sub(reference, (root / "index.html").read_text())
    return Site(_asset("index.html", page.encode()), assets)


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


@cache
def site() -> Site:
    """The package's site, built once per process."""
    return build()
