"""The ``imagegate`` command: its arguments, help text, and what each subcommand does."""

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

from imagegate import __version__, server
from imagegate.app import create_app
from imagegate.db import queries
from imagegate.db.engine import create_engine, create_sessionmaker, is_sqlite
from imagegate.db.migrate import upgrade
from imagegate.errors import AppError, Conflict
from imagegate.events import setup as event_setup
from imagegate.runtime import DataDirBusy, build_storage, prepare_data_dir, signing_key_path
from imagegate.security.accounts import create_account, delete_account
from imagegate.security.keys import load_or_create_signing_key, public_pem
from imagegate.security.passwords import Passwords, normalize_login
from imagegate.settings import ALL_ROLES, SERVICE_ROLES, Role, Settings, load_settings
from imagegate.storage.s3 import S3Storage
from imagegate.tls import ensure_self_signed

log = logging.getLogger("imagegate")
DEMO_LOGIN, DEMO_PASSWORD = "bob", "qwe123"
LOG_LEVELS = ("debug", "info", "warning", "error")

DESCRIPTION = """\
imagegate: a self-hosted image service. People register, log in, upload images
and get them back, publicly or privately. 'imagegate serve' runs it; the other
commands manage accounts, keys, storage and the database.

Every setting is also an environment variable (IMAGEGATE_DATA_DIR,
IMAGEGATE_DATABASE_URL, ...: see the README); a flag overrides its variable."""

EXAMPLES = """\
examples:
  imagegate serve --demo            run everything on http://127.0.0.1:8080, data in ./data,
                                    with the demo account bob / qwe123
  imagegate user add alice          create an account (asks for the password)
  imagegate user list               every account, with its images and bytes
  imagegate openapi > openapi.json  the API description, for client generators

'imagegate COMMAND --help' explains each command."""


def _examples(*lines: str) -> str:
    return (
        "example"
        + ("s" if len(lines) > 1 else "")
        + ":\n"
        + "\n".join(f"  {line}" for line in lines)
    )


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help: str,
    *examples: str,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """A subcommand whose --help shows its description and examples as written."""
    return sub.add_parser(
        name,
        help=help,
        description=description or help[0].upper() + help[1:] + ".",
        epilog=_examples(*examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _actions(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help: str,
    *examples: str,
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """A command made of actions (``imagegate NAME ACTION``); the action goes to NAME_command."""
    parser = _command(sub, name, help, *examples)
    return parser.add_subparsers(
        dest=f"{name}_command", required=True, metavar="ACTION", title="actions"
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder for the database, images and keys (default: ./data)",
    )
    parser.add_argument(
        "--database-url",
        metavar="URL",
        help="database to use, e.g. postgresql://user:pass@host/db (default: SQLite in DIR)",
    )
    parser.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        metavar="LEVEL",
        help=f"{', '.join(LOG_LEVELS)} (serve: info; other commands: warning)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imagegate",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"imagegate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", title="commands")

    serve = _command(
        sub,
        "serve",
        "run the service",
        "imagegate serve --demo                      # try it: http://127.0.0.1:8080/docs",
        "imagegate serve --host 0.0.0.0 --tls        # HTTPS, self-signed certificate",
        "imagegate serve security --port 8081        # one service of a production deployment",
        "IMAGEGATE_EVENTS=kafka imagegate serve relay --port 8091   # with PostgreSQL",
        description=(
            "Run the service. With no ROLE, one process serves the whole API (embedded\n"
            "mode: SQLite and images in the data dir). In production, run 'serve security'\n"
            "and 'serve uploader' separately behind the NGINX gateway (see deploy/).\n"
            "With events on Kafka (IMAGEGATE_EVENTS=kafka, PostgreSQL) also run 'serve relay'\n"
            "(publishes committed events to Kafka; several may run, one publishes at a time)\n"
            "and 'serve worker' (consumes them and runs their handlers: account purge,\n"
            "webhooks). Those two serve only /status, /healthz and /metrics.\n"
            "The database schema is upgraded at start (IMAGEGATE_MIGRATE_ON_START)."
        ),
    )
    serve.add_argument(
        "role",
        nargs="?",
        choices=SERVICE_ROLES,
        metavar="ROLE",
        help="serve only 'security' (accounts, tokens), 'uploader' (images), 'relay' "
        "(publishes events to Kafka) or 'worker' (handles events from Kafka)",
    )
    serve.add_argument("--host", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default: 8080)")
    serve.add_argument(
        "--demo",
        action="store_true",
        default=None,
        help=f"create the demo account {DEMO_LOGIN} / {DEMO_PASSWORD} if absent "
        "(never on a reachable host)",
    )
    tls = serve.add_mutually_exclusive_group()
    tls.add_argument(
        "--tls",
        action="store_true",
        default=None,
        help="serve HTTPS with a self-signed certificate generated into DIR/tls",
    )
    tls.add_argument("--cert", metavar="FILE", help="serve HTTPS with this certificate (PEM)")
    serve.add_argument("--key", metavar="FILE", help="the private key for --cert (PEM)")
    _common(serve)

    user_sub = _actions(
        sub,
        "user",
        "manage accounts",
        "imagegate user add alice",
        "imagegate user list",
        "imagegate user delete alice",
    )
    add = _command(
        user_sub,
        "add",
        "create an account",
        "imagegate user add alice                           # asks for the password",
        "printf '%s\\n' \"$PASSWORD\" | imagegate user add alice   # in a script",
        description=(
            "Create an account. On a terminal the password is asked for twice; otherwise it\n"
            "is the first line of standard input. The password policy applies (at least 12\n"
            "characters, not a common password)."
        ),
    )
    add.add_argument("login", help="3-64 characters of a-z 0-9 . _ - (folded to lower case)")
    _common(add)
    lst = _command(
        user_sub,
        "list",
        "list accounts",
        "imagegate user list",
        description="List accounts, one a line: login, id, creation time, images and bytes,\n"
        "separated by tabs.",
    )
    _common(lst)
    delete = _command(
        user_sub,
        "delete",
        "delete an account and all its images",
        "imagegate user delete alice",
        description="Delete an account and all its images. The account and its records are\n"
        "gone when the command returns; the image files are removed in the background\n"
        "by the server (embedded: the running 'imagegate serve', or at its next start;\n"
        "with Kafka: the worker).",
    )
    delete.add_argument("login")
    _common(delete)

    storage_sub = _actions(sub, "storage", "set up image storage", "imagegate storage init")
    init = _command(
        storage_sub,
        "init",
        "S3 storage: create the bucket; anonymous reads of public images only",
        "IMAGEGATE_STORAGE=s3 IMAGEGATE_S3_ENDPOINT=http://127.0.0.1:9000 \\\n"
        "    IMAGEGATE_S3_ACCESS_KEY=... IMAGEGATE_S3_SECRET_KEY=... imagegate storage init",
    )
    _common(init)

    keys_sub = _actions(sub, "keys", "token signing keys", "imagegate keys public > jwt-public.pem")
    pub = _command(
        keys_sub,
        "public",
        "print the public key that verifies tokens",
        "imagegate keys public > jwt-public.pem",
        description=(
            "Print the public key that verifies tokens (PEM), creating the signing key in\n"
            "the data dir if there is none. Give it to the services that only verify\n"
            "tokens (IMAGEGATE_JWT_PUBLIC_KEY_FILE)."
        ),
    )
    _common(pub)

    tls_sub = _actions(
        sub,
        "tls",
        "certificates for HTTPS",
        "imagegate tls self-signed deploy/tls --host localhost",
    )
    cert = _command(
        tls_sub,
        "self-signed",
        "write a self-signed cert.pem and key.pem into a folder, for local HTTPS",
        "imagegate tls self-signed deploy/tls --host localhost --host images.internal",
    )
    cert.add_argument("folder", help="where to write cert.pem and key.pem")
    cert.add_argument(
        "--host",
        action="append",
        default=[],
        metavar="NAME",
        help="a DNS name the certificate is for (repeatable; default: localhost)",
    )

    variants_sub = _actions(
        sub, "variants", "image variants (thumbnails, AVIF/WebP)", "imagegate variants rebuild"
    )
    rebuild = _command(
        variants_sub,
        "rebuild",
        "make the variants existing images lack, or whose preset changed size",
        "imagegate variants rebuild",
        "imagegate variants rebuild --preset thumb --jobs 2",
        description=(
            "Make the variants existing images lack (images from before variants, or a\n"
            "preset added), and remake those whose preset changed size. Resumable: what\n"
            "is done is skipped. Uses --jobs processes at a low CPU priority."
        ),
    )
    rebuild.add_argument("--preset", metavar="NAME", help="only this preset (default: all)")
    rebuild.add_argument(
        "--jobs", type=int, default=1, metavar="N", help="images made at once (default: 1)"
    )
    _common(rebuild)
    sign = _command(
        variants_sub,
        "sign",
        "print the signed URL of a custom size of a public image",
        "IMAGEGATE_VARIANT_SIGNING_KEYS=... imagegate variants sign NAME.jpg --width 480 "
        "--height 270 --fit cover",
    )
    sign.add_argument("image", help="the image's name, <uuid>.<ext>")
    sign.add_argument("--width", type=int, metavar="PX", help="at most this wide")
    sign.add_argument("--height", type=int, metavar="PX", help="at most this high")
    sign.add_argument("--fit", choices=("contain", "cover"), default="contain")
    _common(sign)

    spec = _command(
        sub,
        "openapi",
        "print the OpenAPI description of every route (JSON)",
        "imagegate openapi > openapi.json",
    )
    _common(spec)

    db_sub = _actions(sub, "db", "database schema", "imagegate db upgrade")
    up = _command(
        db_sub,
        "upgrade",
        "bring the database schema up to date",
        "imagegate db upgrade --database-url postgresql://imagegate:...@db/imagegate",
        description=(
            "Bring the database schema up to date. 'serve' does it at start unless\n"
            "IMAGEGATE_MIGRATE_ON_START=false; then run this once per release."
        ),
    )
    _common(up)

    events_sub = _actions(
        sub,
        "events",
        "set up Kafka for the events",
        "imagegate events setup --acls --relay-user relay --worker-user worker "
        "--reader-user reader",
    )
    setup = _command(
        events_sub,
        "setup",
        "create the event topics on Kafka and, with --acls, the services' ACLs",
        "IMAGEGATE_KAFKA_BOOTSTRAP=kafka-1:9092 IMAGEGATE_KAFKA_USERNAME=admin \\\n"
        "    IMAGEGATE_KAFKA_PASSWORD=... imagegate events setup",
        "imagegate events setup --bootstrap kafka-1:9092 --username admin \\\n"
        "    --password-file /run/secrets/kafka-admin --acls \\\n"
        "    --relay-user relay --worker-user worker --reader-user reader",
        "imagegate events setup --partitions 12 --grow-partitions   # more partitions",
        description=(
            "Create the event topics <prefix>.accounts and <prefix>.images on a Kafka\n"
            "cluster (MSK, Confluent, your own) and, with --acls, the ACLs of the services'\n"
            "Kafka users: the relay writes both topics, the worker reads them in its group\n"
            "(IMAGEGATE_KAFKA_CONSUMER_GROUP), the reader (security and uploader) reads\n"
            "<prefix>.accounts in groups imagegate-replica-*. Run it once with an\n"
            "administrator's credentials, before the relay and the worker start.\n"
            "\n"
            "It connects with the IMAGEGATE_KAFKA_* settings (bootstrap, security protocol,\n"
            "SASL mechanism, CA file, username, password); the flags below override them.\n"
            "Existing topics are reported and left as they are (their partitions grow only\n"
            "with --grow-partitions); existing ACLs are kept, other users' too. Running it\n"
            "again changes nothing. Exit status 1, with a one-line error, when Kafka is\n"
            "unreachable or the user may not do something."
        ),
    )
    setup.add_argument(
        "--bootstrap", metavar="SERVERS", help="brokers, host:port,... (IMAGEGATE_KAFKA_BOOTSTRAP)"
    )
    setup.add_argument(
        "--username",
        metavar="NAME",
        help="the administrator's Kafka user (IMAGEGATE_KAFKA_USERNAME)",
    )
    setup.add_argument(
        "--password-file",
        metavar="FILE",
        help="read its password from the first line of FILE, '-' for standard input "
        "(IMAGEGATE_KAFKA_PASSWORD)",
    )
    setup.add_argument(
        "--topic-prefix",
        metavar="PREFIX",
        help="topics <PREFIX>.accounts and <PREFIX>.images (IMAGEGATE_KAFKA_TOPIC_PREFIX)",
    )
    layout = setup.add_argument_group("new topics")
    layout.add_argument(
        "--partitions",
        type=int,
        default=event_setup.DEFAULT_PARTITIONS,
        metavar="N",
        help="partitions of each topic: at most this many workers share the work "
        "(default: %(default)s)",
    )
    layout.add_argument(
        "--replication-factor",
        type=int,
        default=event_setup.DEFAULT_REPLICATION,
        metavar="N",
        help="copies of each partition, on different brokers (default: %(default)s)",
    )
    layout.add_argument(
        "--min-insync-replicas",
        type=int,
        default=event_setup.DEFAULT_MIN_INSYNC,
        metavar="N",
        help="copies a write needs before it is acknowledged (default: %(default)s)",
    )
    layout.add_argument(
        "--grow-partitions",
        action="store_true",
        help="add partitions to an existing topic that has fewer than --partitions (an "
        "account's new events then go to another partition than its old ones)",
    )
    access = setup.add_argument_group("ACLs")
    access.add_argument(
        "--acls", action="store_true", help="also create the ACLs of the three users below"
    )
    access.add_argument("--relay-user", metavar="NAME", help="the relay's Kafka user")
    access.add_argument("--worker-user", metavar="NAME", help="the worker's Kafka user")
    access.add_argument(
        "--reader-user", metavar="NAME", help="the Kafka user of security and uploader"
    )
    access.add_argument(
        "--worker-group",
        metavar="GROUP",
        help="the worker's group (IMAGEGATE_KAFKA_CONSUMER_GROUP)",
    )
    setup.add_argument(
        "--timeout",
        type=float,
        default=event_setup.CONNECT_TIMEOUT_SECONDS,
        metavar="SECONDS",
        help="how long to wait for the cluster to answer (default: %(default)g)",
    )
    setup.add_argument(
        "--log-level",
        type=str.lower,
        choices=LOG_LEVELS,
        metavar="LEVEL",
        help=f"{', '.join(LOG_LEVELS)} (default: warning)",
    )
    return parser


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
        + (f", {_count(done.failed, 'image')} refused" if done.failed else "")
    )


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
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
        elif args.command == "openapi":
            sys.stdout.write(json.dumps(create_app(settings).openapi(), indent=1) + "\n")
        elif args.command == "storage":
            store = build_storage(settings)
            if not isinstance(store, S3Storage):
                raise SystemExit("error: storage init is for S3 storage (IMAGEGATE_STORAGE=s3)")
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
