"""Token signing keys: a key ring in PEM files, generated once into the data dir (0600).

A ring file is plain PEM — one key, as an operator would supply it, or several, newest first
(``imagegate keys rotate`` writes them, security/rotation.py). Before a block, an RFC 7468
explanatory line ``imagegate-key not-before=T retire-after=T`` (Unix seconds) may say when that
key starts signing (a new key is published before it signs) and when every token it signed has
expired (then it is dropped). The private file holds the signing keys (security), the public
file (``IMAGEGATE_JWT_PUBLIC_KEY_FILE``) what verifiers need. :class:`KeyRing` reads both and
looks at them again (a ``stat``, at most once a second) when a token names an unknown ``kid``
or a token is signed, so rotation needs no restart anywhere.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

log = logging.getLogger("imagegate")


def _b64url_uint(value: int) -> str:
    return base64.urlsafe_b64encode(value.to_bytes(32, "big")).rstrip(b"=").decode()


def public_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    """The RFC 7517 JWK of a P-256 public key, with its RFC 7638 thumbprint as ``kid``."""
    numbers = key.public_numbers()
    jwk = {"crv": "P-256", "kty": "EC", "x": _b64url_uint(numbers.x), "y": _b64url_uint(numbers.y)}
    canonical = json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode()
    kid = base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()
    return {**jwk, "kid": kid, "alg": "ES256", "use": "sig"}


def _create_private_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: two processes starting at once cannot both write a key; the loser reads the winner's.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class RingKey:
    """One key of a ring: its public half, its private half in a signer's file, and its times."""

    kid: str
    public: ec.EllipticCurvePublicKey
    private: ec.EllipticCurvePrivateKey | None = None
    not_before: float = 0.0  # signs from then on (until a newer key does)
    retire_after: float | None = None  # every token it signed has expired by then

    def retired(self, now: float) -> bool:
        return self.retire_after is not None and now > self.retire_after


_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----", re.DOTALL)
_NOTE = re.compile(rb"imagegate-key((?: [a-z-]+=[0-9.]+)*)")


def _p256(key: object, path: Path) -> None:
    curve = getattr(key, "curve", None)
    if curve is None or curve.name != "secp256r1":
        raise ValueError(f"{path}: expected EC P-256 keys for ES256")


def parse_ring(data: bytes, path: Path) -> list[RingKey]:
    """Every key in a ring file's bytes, in file order (newest first)."""
    keys: list[RingKey] = []
    at = 0
    for block in _BLOCK.finditer(data):
        notes = _NOTE.findall(data[at : block.start()])
        at = block.end()
        times = dict(
            part.split(b"=", 1) for part in (notes[-1].split() if notes else []) if b"=" in part
        )
        private: ec.EllipticCurvePrivateKey | None = None
        if b"PRIVATE KEY" in block.group(1):
            loaded = serialization.load_pem_private_key(block.group(0), password=None)
            _p256(loaded, path)
            assert isinstance(loaded, ec.EllipticCurvePrivateKey)
            private, public = loaded, loaded.public_key()
        elif block.group(1) == b"PUBLIC KEY":
            loaded_public = serialization.load_pem_public_key(block.group(0))
            _p256(loaded_public, path)
            assert isinstance(loaded_public, ec.EllipticCurvePublicKey)
            public = loaded_public
        else:
            continue
        retire = times.get(b"retire-after")
        keys.append(
            RingKey(
                public_jwk(public)["kid"],
                public,
                private,
                float(times.get(b"not-before", b"0")),
                float(retire) if retire is not None else None,
            )
        )
    if not keys:
        raise ValueError(f"{path}: no keys found")
    return keys


def format_ring(keys: list[RingKey], *, private: bool) -> bytes:
    """A ring file's bytes: the keys in order, each with its times."""
    out = []
    for key in keys:
        # Whole seconds, rounded up: a key never starts signing, nor retires, early.
        note = f"imagegate-key not-before={math.ceil(key.not_before)}"
        if key.retire_after is not None:
            note += f" retire-after={math.ceil(key.retire_after)}"
        out.append(f"{note} # kid {key.kid}\n".encode())
        if private:
            if key.private is None:
                raise ValueError(f"no private key for {key.kid}")
            out.append(private_pem(key.private))
        else:
            out.append(public_pem(key.public))
    return b"".join(out)


def write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Replace ``path`` by ``data`` in one rename: a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        with contextlib.suppress(OSError):  # keep the owner of the file it replaces (root CLI)
            st = path.stat()
            os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def create_signing_key_file(path: Path) -> None:
    """A first signing key at ``path``, unless there is one (two starting processes agree)."""
    if path.exists():
        return
    with contextlib.suppress(FileExistsError):
        _create_private_file(path, private_pem(ec.generate_private_key(ec.SECP256R1())))


def current_signer(keys: list[RingKey], now: float) -> RingKey:
    """The key that signs at ``now``: the newest one started; the oldest if none has."""
    signers = [k for k in keys if k.private is not None]
    if not signers:
        raise ValueError("no private key in the signing key file")
    started = [k for k in signers if k.not_before <= now]
    return max(started, key=lambda k: k.not_before) if started else signers[-1]


def load_or_create_signing_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The key that signs now in the ring at ``path``, creating a first key if there is none."""
    create_signing_key_file(path)
    signer = current_signer(parse_ring(path.read_bytes(), path), time.time())
    assert signer.private is not None
    return signer.private


def load_public_keys(path: Path) -> list[ec.EllipticCurvePublicKey]:
    """Every public key of a ring file that is not retired (the current, new and old ones)."""
    now = time.time()
    return [k.public for k in parse_ring(path.read_bytes(), path) if not k.retired(now)]


_Stamp = tuple[tuple[int, int, int] | None, ...]


class KeyRing(Mapping[str, ec.EllipticCurvePublicKey]):
    """The keys of this process, by ``kid``, read again when their files change.

    Used as TokenVerifier's key mapping: a ``kid`` it does not know makes it ``stat`` the
    files (at most once per ``interval``, so garbage ``kid`` values cost nothing) and reload
    them if they changed. Signers ask :meth:`signer` on every token, which looks the same way,
    so a rotation reaches every process within ``interval`` of its next token.
    """

    def __init__(
        self,
        private_file: Path | None,
        public_file: Path | None,
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.files = [p for p in (private_file, public_file) if p is not None]
        self.private_file = private_file
        self._interval = interval
        self._clock = clock
        self._monotonic = monotonic
        if private_file is not None:
            create_signing_key_file(private_file)
        self._stamp = self._stat()
        self._keys = self._read()
        self._checked = monotonic()

    def _stat(self) -> _Stamp:
        stamps: list[tuple[int, int, int] | None] = []
        for path in self.files:
            try:
                st = path.stat()
                stamps.append((st.st_ino, st.st_mtime_ns, st.st_size))
            except FileNotFoundError:
                stamps.append(None)
        return tuple(stamps)

    def _read(self) -> dict[str, RingKey]:
        keys: dict[str, RingKey] = {}
        for path in self.files:
            if path != self.private_file and self.private_file and not path.exists():
                continue  # a signer's public file is written by its first rotation
            for key in parse_ring(path.read_bytes(), path):
                known = keys.get(key.kid)
                if known is None or (known.private is None and key.private is not None):
                    keys[key.kid] = key
        return keys

    def refresh(self) -> bool:
        """Reload the files if they changed (a ``stat`` at most once per interval); whether
        the keys changed."""
        now = self._monotonic()
        if now - self._checked < self._interval:
            return False
        self._checked = now
        stamp = self._stat()
        if stamp == self._stamp:
            return False
        self._stamp = stamp  # a broken file is reported once, and read again when it changes
        try:
            keys = self._read()
        except (OSError, ValueError) as exc:
            # Keep the keys we have: a broken file must not stop every token.
            log.error("signing keys not reloaded: %s", exc)
            return False
        self._keys = keys
        log.info("signing keys reloaded: %s", ", ".join(self._keys))
        return True

    def __getitem__(self, kid: str) -> ec.EllipticCurvePublicKey:
        key = self._keys.get(kid)
        if key is None and self.refresh():
            key = self._keys.get(kid)
        if key is None or key.retired(self._clock()):
            raise KeyError(kid)
        return key.public

    def __iter__(self) -> Iterator[str]:
        self.refresh()  # JWKS: a new key is listed before it signs, for verifiers elsewhere
        now = self._clock()
        return iter([kid for kid, key in self._keys.items() if not key.retired(now)])

    def __len__(self) -> int:
        return sum(1 for _ in self)

    @property
    def can_sign(self) -> bool:
        return any(k.private is not None for k in self._keys.values())

    def signer(self) -> tuple[ec.EllipticCurvePrivateKey, str]:
        """The key to sign with now, and its kid."""
        self.refresh()
        key = current_signer(list(self._keys.values()), self._clock())
        assert key.private is not None
        return key.private, key.kid

    def keys_in_order(self) -> list[RingKey]:
        """Every key known, newest first (for rotation and listings)."""
        return sorted(self._keys.values(), key=lambda k: k.not_before, reverse=True)
