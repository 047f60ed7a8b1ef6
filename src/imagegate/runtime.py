"""Everything a running app holds: built once from settings, shared by its routes."""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from imagegate.db.engine import create_engine, create_sessionmaker
from imagegate.db.reads import Reader, create_reader
from imagegate.events.handlers import HandlerContext
from imagegate.events.outbox import WAKE_INFO_KEY
from imagegate.events.service import EventServices
from imagegate.metrics import Metrics
from imagegate.security.apikeys import ApiKeys
from imagegate.security.directory import Directory, build_directory
from imagegate.security.keys import KeyRing
from imagegate.security.passwords import Passwords
from imagegate.security.rotation import RingIssuer, signing_key_file
from imagegate.security.tokens import TokenIssuer, TokenVerifier
from imagegate.settings import Role, Settings
from imagegate.storage.base import Storage
from imagegate.storage.local import LocalStorage
from imagegate.storage.reconcile import remove_orphans
from imagegate.uploader.admission import Admission
from imagegate.uploader.pool import CodecPool
from imagegate.variants.maker import VariantMaker

log = logging.getLogger("imagegate")


class DataDirBusy(RuntimeError):
    pass


@dataclass
class Runtime:
    settings: Settings
    roles: tuple[Role, ...]
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    reads: Reader
    storage: Storage
    metrics: Metrics
    verifier: TokenVerifier
    issuer: TokenIssuer | None
    passwords: Passwords
    events: EventServices
    directory: Directory
    variants: VariantMaker
    api_keys: ApiKeys
    codec: CodecPool | None = None
    admission: Admission | None = None
    _lock: IO[bytes] | None = field(default=None, repr=False)

    def token_issuer(self) -> TokenIssuer:
        if self.issuer is None:
            raise RuntimeError("this process has no signing key (not the security role)")
        return self.issuer

    async def start(self) -> None:
        """Uploader: claim the data dir, clear leftovers of a crash, start the codec workers.
        Every role: start its event machinery (see events/service.py)."""
        if "uploader" in self.roles:
            await self._start_uploader()
        await self.events.start()
        await self.directory.start()

    async def _start_uploader(self) -> None:
        self._lock = lock_data_dir(self.settings.data_dir)
        tmp = self.settings.tmp_dir
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True, mode=0o700)
        if isinstance(self.storage, LocalStorage):
            # Holding the lock, nobody else writes this folder: every record-less file is an
            # orphan of a crash.
            await remove_orphans(self.storage, self.sessions, older_than=time.time())
        else:
            # Other replicas share the bucket and may be between storing and recording.
            grace = self.settings.orphan_grace_seconds
            try:
                await remove_orphans(self.storage, self.sessions, older_than=time.time() - grace)
            except OSError as exc:
                log.warning("storage unavailable at start; orphans not checked: %s", exc)
        self.admission = Admission.from_settings(
            self.settings, self.metrics.registry, listener=self.variants.uploads_in_progress
        )
        self.codec = CodecPool.from_settings(self.settings)
        # The server answers at once; /healthz says ready when the workers are (pool.py).
        self.codec.warm_in_background()

    async def stop(self) -> None:
        await self.api_keys.close()
        await self.directory.stop()
        await self.events.stop()
        await self.variants.close()
        if self.codec is not None:
            self.codec.close()
        await self.reads.close()
        await self.engine.dispose()
        if self._lock is not None:
            self._lock.close()


def lock_data_dir(data_dir: Path) -> IO[bytes]:
    """One uploader per data dir: it owns the folder's files and cleans them at start."""
    handle = open(data_dir / ".lock", "wb")  # noqa: SIM115 - held for the process lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        handle.close()
        raise DataDirBusy(f"another imagegate process is using {data_dir}") from exc
    return handle


def prepare_data_dir(data_dir: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)


def build_storage(settings: Settings) -> Storage:
    if settings.storage == "s3":
        # Imported only for S3: boto3 is a quarter of a second of every start otherwise.
        from imagegate.storage.s3 import S3Storage

        secret = settings.s3_secret_key
        return S3Storage(
            settings.s3_bucket,
            endpoint=settings.s3_endpoint,
            region=settings.s3_region,
            access_key=settings.s3_access_key,
            secret_key=secret.get_secret_value() if secret else None,
        )
    return LocalStorage(settings.images_dir)


def signing_key_path(settings: Settings) -> Path:
    return signing_key_file(settings)


def _keys(settings: Settings, roles: tuple[Role, ...]) -> KeyRing:
    """The keys that verify tokens, and sign them (security role only), as a ring that reads
    its files again when they change (``imagegate keys rotate``, security/rotation.py)."""
    public_file = settings.jwt_public_key_file
    if "security" not in roles and public_file:
        return KeyRing(None, public_file)  # least privilege: a verifier holds public keys only
    return KeyRing(signing_key_path(settings), public_file)


def build_runtime(settings: Settings, roles: tuple[Role, ...]) -> Runtime:
    """Wire the components for ``roles``; starts nothing (see :meth:`Runtime.start`)."""
    prepare_data_dir(settings.data_dir)
    ring = _keys(settings, roles)
    url = settings.effective_database_url
    engine = create_engine(url, settings.database_pool_size)
    sessions = create_sessionmaker(engine)
    storage = build_storage(settings)
    metrics = Metrics()
    variants = VariantMaker(settings, sessions, storage, metrics)
    events = EventServices(
        HandlerContext(settings, sessions, storage, metrics, variants), engine, roles
    )
    # A commit that emitted an event wakes this process's dispatcher (see outbox.emit).
    sessions.configure(info={WAKE_INFO_KEY: events.wake})
    reads = create_reader(url, engine)
    return Runtime(
        settings=settings,
        roles=roles,
        engine=engine,
        sessions=sessions,
        reads=reads,
        storage=storage,
        metrics=metrics,
        events=events,
        variants=variants,
        directory=build_directory(settings, roles, reads, engine, sessions, metrics),
        api_keys=ApiKeys(reads, sessions),
        verifier=TokenVerifier(
            ring,
            settings.jwt_issuer,
            settings.jwt_audience,
            settings.token_leeway_seconds,
            settings.token_cache_size,
        ),
        issuer=RingIssuer(
            ring, settings.jwt_issuer, settings.jwt_audience, settings.token_ttl_seconds
        )
        if ring.can_sign
        else None,
        passwords=Passwords(
            settings.argon2_time_cost,
            settings.argon2_memory_kib,
            settings.argon2_parallelism,
            concurrency=max(2, (os.cpu_count() or 1) * 2),
        ),
    )
