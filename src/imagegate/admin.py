"""The server-administration commands of ``imagegate`` (serve, user, db, storage, events,
variants, tls, keys public/rotate, openapi): what they do once ``imagegate.cli`` has parsed them.
Imported only for these commands, so that the client commands and ``--help`` do not load the
server (FastAPI, SQLAlchemy, boto3, Alembic)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate import server
from imagegate.app import create_app
from imagegate.cli import DEMO_LOGIN, DEMO_PASSWORD
from imagegate.db import queries
from imagegate.db.engine import create_engine, create_sessionmaker, is_sqlite
from imagegate.db.migrate import upgrade
from imagegate.errors import AppError, Conflict
from imagegate.events import setup as event_setup
from imagegate.runtime import DataDirBusy, build_storage, prepare_data_dir
from imagegate.security.accounts import create_account, delete_account
from imagegate.security.passwords import Passwords, normalize_login
from imagegate.settings import ALL_ROLES, Role, Settings, load_settings
from imagegate.storage.s3 import S3Storage
from imagegate.tls import ensure_self_signed

log = logging.getLogger("imagegate")


def _events_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The settings 'events setup' takes from its flags (None: the environment's)."""
    password, source = None, args.password_file
    if source == "-":
        password = sys.stdin.readline().rstrip("\r\n")
    elif source:
        try:
            with open(source, encoding="utf-8") as f:
                password = f.readline().rstrip("\r\n")
        except OSError as exc:
            raise SystemExit(f"error: cannot read the password file: {exc}") from None
    return {
        "kafka_bootstrap": args.bootstrap,
        "kafka_username": args.username,
        "kafka_password": password,
        "kafka_topic_prefix": args.topic_prefix,
        "kafka_consumer_group": args.worker_group,
    }


def _events_setup(settings: Settings, args: argparse.Namespace) -> None:
    principals = None
    if args.acls:
        users = {"--relay-user": args.relay_user, "--worker-user": args.worker_user}
        users["--reader-user"] = args.reader_user
        absent = [flag for flag, name in users.items() if not name]
        if absent:
            raise SystemExit(f"error: --acls needs {', '.join(absent)}")
        principals = (args.relay_user, args.worker_user, args.reader_user)
    options = event_setup.Options(
        partitions=args.partitions,
        replication=args.replication_factor,
        min_insync=args.min_insync_replicas,
        grow_partitions=args.grow_partitions,
        principals=principals,
        connect_timeout=args.timeout,
    )
    try:
        event_setup.setup(settings, options, say=lambda line: print(line, flush=True))
    except event_setup.SetupError as exc:
        raise SystemExit(f"error: {exc}") from None


def _settings(args: argparse.Namespace) -> Settings:
    flags: dict[str, Any] = {
        "data_dir": getattr(args, "data_dir", None),
        "database_url": getattr(args, "database_url", None),
        "log_level": getattr(args, "log_level", None),
    }
    if args.command == "serve":
        flags |= {
            "host": args.host,
            "port": args.port,
            "demo": args.demo,
            "tls": args.tls,
            "tls_cert": args.cert,
            "tls_key": args.key,
        }
    if args.command == "events":
        flags |= _events_flags(args)
    try:
        return load_settings(**flags)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'settings'}: {err['msg']}"
            for err in exc.errors()
        )
        raise SystemExit(f"error: invalid settings: {problems}") from None


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _log_level(args: argparse.Namespace, settings: Settings) -> str:
    """The server logs at IMAGEGATE_LOG_LEVEL; an admin command prints only its answer, so it
    logs warnings and errors unless asked otherwise with its own --log-level flag."""
    if args.command == "serve":
        return settings.log_level
    return str(getattr(args, "log_level", None) or "warning")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Repeat password: "):
            raise SystemExit("error: passwords do not match")
        return first
    return sys.stdin.readline().rstrip("\r\n")


@asynccontextmanager
async def _session(settings: Settings) -> AsyncIterator[AsyncSession]:
    """A session on the configured database, for one CLI command."""
    engine = create_engine(settings.effective_database_url)
    try:
        async with create_sessionmaker(engine)() as session:
            yield session
    finally:
        await engine.dispose()


def _passwords(settings: Settings) -> Passwords:
    return Passwords(
        settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism, 1
    )


async def _add_user(settings: Settings, login: str, password: str, *, enforce: bool) -> None:
    async with _session(settings) as session:
        user = await create_account(
            session,
            _passwords(settings),
            login,
            password,
            min_length=settings.password_min_length,
            source=settings.event_source,
            enforce_policy=enforce,
        )
    print(f"created {user.login} ({user.id})")


async def _ensure_demo_user(settings: Settings) -> None:
    async with _session(settings) as session:
        if await queries.user_by_login(session, DEMO_LOGIN) is not None:
            return
        try:
            await _add_user(settings, DEMO_LOGIN, DEMO_PASSWORD, enforce=False)
        except Conflict:
            return  # another replica created it a moment ago
    banner = "!" * 78
    log.warning(
        "\n%s\n  DEMO MODE: created user %r with the well-known password %r.\n"
        "  It bypasses the password policy. Never use --demo on a reachable host.\n%s",
        banner,
        DEMO_LOGIN,
        DEMO_PASSWORD,
        banner,
    )


async def _list_users(settings: Settings) -> None:
    async with _session(settings) as session:
        for account in await queries.accounts(session):
            print(
                f"{account.login}\t{account.id}\t{account.created_at.isoformat()}\t"
                f"{_count(account.images, 'image')}\t{_count(account.bytes, 'byte')}"
            )


async def _delete_user(settings: Settings, login: str) -> None:
    async with _session(settings) as session:
        user = await queries.user_by_login(session, normalize_login(login))
        if user is None:
            raise SystemExit(f"error: no such user: {login}")
        try:
            deleted = await delete_account(session, user, source=settings.event_source)
        except LookupError:  # deleted by someone else a moment ago
            raise SystemExit(f"error: no such user: {login}") from None
    # The records are gone; the bytes are removed by the account.deleted handler: the running
    # server's dispatcher (or the Kafka worker) picks the event up from the outbox.
    if deleted.images == 0:
        print(f"deleted {deleted.login} and 0 images")
    else:
        print(
            f"deleted {deleted.login} and {_count(deleted.images, 'image')}; the image files "
            "are removed in the background by the server (within seconds while it runs)"
        )


def _serve(settings: Settings, role: Role | None) -> None:
    roles: tuple[Role, ...] = (role,) if role else ALL_ROLES
    if role == "relay" and is_sqlite(settings.effective_database_url):
        raise SystemExit(
            "error: the relay needs PostgreSQL (IMAGEGATE_DATABASE_URL=postgresql://...); "
            "with SQLite, events are handled inside 'imagegate serve' (IMAGEGATE_EVENTS=inline)"
        )
    prepare_data_dir(settings.data_dir)
    if settings.migrate_on_start:
        upgrade(settings.effective_database_url)
    if settings.demo:
        asyncio.run(_ensure_demo_user(settings))
    ssl: dict[str, Any] = {}
    if settings.tls_cert and settings.tls_key:
        ssl = {"ssl_certfile": str(settings.tls_cert), "ssl_keyfile": str(settings.tls_key)}
    elif settings.tls:
        cert, key = ensure_self_signed(settings.data_dir / "tls")
        ssl = {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}
    app = create_app(settings, roles)
    scheme = "https" if ssl else "http"
    log.info("imagegate %s on %s://%s:%d", "+".join(roles), scheme, settings.host, settings.port)
    server.run(app, settings, ssl)


def _variants(settings: Settings, args: argparse.Namespace) -> None:
    from imagegate.variants import rebuild, signing

    if args.variants_command == "sign":
        if not settings.variant_signing_keys:
            raise SystemExit("error: set IMAGEGATE_VARIANT_SIGNING_KEYS (the first key signs)")
        if args.width is None and args.height is None:
            raise SystemExit("error: give --width, --height or both")
        path = f"/images/size/{args.image}"
        message = signing.signed_message(path, args.width, args.height, args.fit)
        sig = signing.sign(settings.variant_signing_keys[0], message)
        query = f"w={args.width or ''}&h={args.height or ''}&fit={args.fit}&sig={sig}"
        print(f"{path}?{query}")
        return
    if args.jobs < 1:
        raise SystemExit("error: --jobs must be 1 or more")
    prepare_data_dir(settings.data_dir)
    upgrade(settings.effective_database_url)
    try:
        done = asyncio.run(rebuild.rebuild(settings, args.preset, args.jobs))
    except DataDirBusy:
        raise SystemExit(
            f"error: a server is using {settings.data_dir}; stop it first (it makes missing "
            "variants itself when they are asked for)"
        ) from None
    print(
        f"{_count(done.images, 'image')} checked, {_count(done.made, 'variant')} made"
        + (f", {done.removed} of removed presets removed" if done.removed else "")
        + (f", {_count(done.failed, 'image')} refused" if done.failed else "")
    )


def _keys(settings: Settings, args: argparse.Namespace) -> None:
    prepare_data_dir(settings.data_dir)
    from imagegate.security.rotation import public_keys_pem, rotate

    if args.keys_command == "rotate":
        kid = rotate(settings)
        print(
            f"new signing key {kid}: it signs new tokens after "
            f"{settings.jwt_key_activation_seconds:g} s (IMAGEGATE_JWT_KEY_ACTIVATION_SECONDS); "
            "the previous key keeps verifying until its tokens have expired"
        )
        return
    # Every published key (the next, current and previous ones): a verifier given only the
    # current one would refuse tokens of the key a rotation is bringing in.
    sys.stdout.write(public_keys_pem(settings))


def run(args: argparse.Namespace) -> None:
    """Run a parsed server-administration command."""
    settings = _settings(args)
    _configure_logging(_log_level(args, settings))
    try:
        if args.command == "serve":
            _serve(settings, args.role)
        elif args.command == "db":
            prepare_data_dir(settings.data_dir)
            before, after = upgrade(settings.effective_database_url)
            if before == after:
                print(f"database schema is up to date (revision {after})")
            else:
                print(f"database schema upgraded from {before or 'empty'} to revision {after}")
        elif args.command == "events":
            _events_setup(settings, args)
        elif args.command == "variants":
            _variants(settings, args)
        elif args.command == "tls":
            hosts = tuple(args.host) or ("localhost",)
            cert_path, key_path = ensure_self_signed(Path(args.folder), hosts)
            print(f"{cert_path}\n{key_path}")
        elif args.command == "web":
            from imagegate.web.assets import site

            written = site().export(Path(args.folder))
            print(f"{len(written)} files written to {args.folder}")
        elif args.command == "openapi":
            sys.stdout.write(json.dumps(create_app(settings).openapi(), indent=1) + "\n")
        elif args.command == "storage":
            store = build_storage(settings)
            if not isinstance(store, S3Storage):
                raise SystemExit("error: storage init is for S3 storage (IMAGEGATE_STORAGE=s3)")
            store.init_bucket()
            print(f"bucket {store.bucket} ready: anonymous reads of public/* only")
        elif args.command == "keys":
            _keys(settings, args)
        elif args.command == "user":
            prepare_data_dir(settings.data_dir)
            upgrade(settings.effective_database_url)
            if args.user_command == "add":
                asyncio.run(_add_user(settings, args.login, _read_password(), enforce=True))
            elif args.user_command == "list":
                asyncio.run(_list_users(settings))
            else:
                asyncio.run(_delete_user(settings, args.login))
    except AppError as exc:
        raise SystemExit(f"error: {exc.message}") from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
