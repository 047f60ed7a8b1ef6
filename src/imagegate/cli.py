"""The ``imagegate`` command: serve, user and db subcommands."""

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

from sqlalchemy.ext.asyncio import AsyncSession

from imagegate import server
from imagegate.app import create_app
from imagegate.db import queries
from imagegate.db.engine import create_engine, create_sessionmaker
from imagegate.db.migrate import upgrade
from imagegate.errors import AppError, Conflict
from imagegate.runtime import build_storage, prepare_data_dir, signing_key_path
from imagegate.security.accounts import create_account
from imagegate.security.keys import load_or_create_signing_key, public_pem
from imagegate.security.passwords import Passwords, normalize_login
from imagegate.settings import ALL_ROLES, Role, Settings, load_settings
from imagegate.storage.s3 import S3Storage
from imagegate.tls import ensure_self_signed

log = logging.getLogger("imagegate")
DEMO_LOGIN, DEMO_PASSWORD = "bob", "qwe123"


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", help="folder for the database, images and keys (./data)")
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in the data dir)")
    parser.add_argument("--log-level", help="debug, info, warning, error")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagegate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service (all roles: embedded mode)")
    serve.add_argument("role", nargs="?", choices=ALL_ROLES, help="run one service alone")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument(
        "--demo",
        action="store_true",
        default=None,
        help=f"create the seed's demo user {DEMO_LOGIN}/{DEMO_PASSWORD} if absent",
    )
    tls = serve.add_mutually_exclusive_group()
    tls.add_argument(
        "--tls",
        action="store_true",
        default=None,
        help="HTTPS with a self-signed certificate generated into the data dir",
    )
    tls.add_argument("--cert", help="HTTPS certificate file (with --key)")
    serve.add_argument("--key", help="HTTPS private key file (with --cert)")
    _common(serve)

    user = sub.add_parser("user", help="manage accounts")
    user_sub = user.add_subparsers(dest="user_command", required=True)
    add = user_sub.add_parser("add", help="create an account; password from a prompt or stdin")
    add.add_argument("login")
    _common(add)
    lst = user_sub.add_parser("list", help="list accounts")
    _common(lst)
    delete = user_sub.add_parser("delete", help="delete an account and all its images")
    delete.add_argument("login")
    _common(delete)

    storage = sub.add_parser("storage", help="image storage")
    storage_sub = storage.add_subparsers(dest="storage_command", required=True)
    init = storage_sub.add_parser(
        "init", help="S3: create the bucket; anonymous reads of public images only"
    )
    _common(init)

    keys = sub.add_parser("keys", help="token signing keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    pub = keys_sub.add_parser(
        "public", help="print the public key (for services that only verify tokens)"
    )
    _common(pub)

    certs = sub.add_parser("tls", help="certificates")
    tls_sub = certs.add_subparsers(dest="tls_command", required=True)
    cert = tls_sub.add_parser(
        "self-signed", help="write cert.pem and key.pem for local HTTPS into a folder"
    )
    cert.add_argument("folder")
    cert.add_argument("--host", action="append", default=[], help="a DNS name (repeatable)")

    spec = sub.add_parser("openapi", help="print the OpenAPI description of every route")
    _common(spec)

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="apply migrations")
    _common(up)
    return parser


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
    return load_settings(**flags)


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if first != getpass.getpass("Repeat password: "):
            raise SystemExit("passwords do not match")
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
                f"{account.images} images\t{account.bytes} bytes"
            )


async def _delete_user(settings: Settings, login: str) -> None:
    async with _session(settings) as session:
        user = await queries.user_by_login(session, normalize_login(login))
        if user is None:
            raise SystemExit(f"no such user: {login}")
        images = [(i.name, i.public) for i in await queries.images_of(session, user.id)]
        await session.delete(user)  # images' rows go by ON DELETE CASCADE
        await session.commit()
    storage = build_storage(settings)
    for name, public in images:  # records first, then bytes: see storage/reconcile.py
        await storage.delete(name, public=public)
    print(f"deleted {login} and {len(images)} images")


def _serve(settings: Settings, role: Role | None) -> None:
    roles: tuple[Role, ...] = (role,) if role else ALL_ROLES
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


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    settings = _settings(args)
    _configure_logging(settings.log_level)
    try:
        if args.command == "serve":
            _serve(settings, args.role)
        elif args.command == "db":
            prepare_data_dir(settings.data_dir)
            upgrade(settings.effective_database_url)
            print("database is at the latest schema")
        elif args.command == "tls":
            hosts = tuple(args.host) or ("localhost",)
            cert_path, key_path = ensure_self_signed(Path(args.folder), hosts)
            print(f"{cert_path}\n{key_path}")
        elif args.command == "openapi":
            sys.stdout.write(json.dumps(create_app(settings).openapi(), indent=1) + "\n")
        elif args.command == "storage":
            store = build_storage(settings)
            if not isinstance(store, S3Storage):
                raise SystemExit("storage init is for S3 storage (IMAGEGATE_STORAGE=s3)")
            store.init_bucket()
            print(f"bucket {store.bucket} ready: anonymous reads of public/* only")
        elif args.command == "keys":
            prepare_data_dir(settings.data_dir)
            key = load_or_create_signing_key(signing_key_path(settings))
            sys.stdout.write(public_pem(key.public_key()).decode())
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
