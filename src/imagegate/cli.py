"""The ``imagegate`` command: its arguments, help text, and which module runs each command.

Only argparse is loaded here, so that ``imagegate --help`` and the client commands answer at
once: the client commands run in ``imagegate.client.commands`` (httpx; rich only for a terminal's
progress bars), the server-administration commands in ``imagegate.admin`` (the whole server),
each imported when its command runs."""

from __future__ import annotations

import argparse
import sys

from imagegate import __version__

DEMO_LOGIN, DEMO_PASSWORD = "bob", "qwe123"
LOG_LEVELS = ("debug", "info", "warning", "error")

# Mirrors of server constants, so that building the parser loads none of the server; a unit
# test checks they equal the originals (settings.SERVICE_ROLES, events.setup.DEFAULT_*).
SERVICE_ROLES = ("security", "uploader", "relay", "worker")
KAFKA_PARTITIONS, KAFKA_REPLICATION, KAFKA_MIN_INSYNC = 6, 3, 2
KAFKA_CONNECT_TIMEOUT = 30.0

CLIENT_COMMANDS = frozenset({"login", "logout", "whoami", "push", "ls", "pull", "rm"})
CLIENT_KEY_ACTIONS = frozenset({"create", "list", "revoke"})

DESCRIPTION = """\
imagegate: a self-hosted image service. People register, log in, upload images
and get them back, publicly or privately. The same command is the client (from
any machine, over HTTP) and the server's administration tool (on the server)."""

SECTIONS = """\
client commands (any machine; 'imagegate login URL' first, or IMAGEGATE_URL and
IMAGEGATE_API_KEY for scripts):
  login URL             log in to a server and keep the session
  logout                end the session and forget it
  whoami                the account you are logged in as
  push FILE|DIR...      upload images, with progress; resumable
  ls                    list your images
  pull NAME             download one of your images
  rm NAME...            delete images
  keys create|list|revoke
                        API keys for scripts and CI

server administration (on the server, with its data dir or database):
  serve                 run the service
  user                  manage accounts
  db                    database schema
  storage               set up image storage
  events                set up Kafka for the events
  variants              image variants (thumbnails, AVIF/WebP)
  tls                   certificates for HTTPS
  keys public|rotate    token signing keys
  web export FOLDER     the web page's files, for the gateway
  openapi               print the OpenAPI description of every route (JSON)

Every server setting is also an environment variable (IMAGEGATE_DATA_DIR,
IMAGEGATE_DATABASE_URL, ...: see the README); a flag overrides its variable."""

EXAMPLES = """\
examples:
  imagegate serve --demo            run everything on http://127.0.0.1:8080, data in ./data,
                                    with the demo account bob / qwe123
  imagegate user add alice          create an account (asks for the password)
  imagegate login http://127.0.0.1:8080     log in (asks for the login and password)
  imagegate push ~/Pictures --jobs 4        upload a folder, 4 files at a time
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
        usage="imagegate [-h] [--version] COMMAND ...",
        description=DESCRIPTION + "\n\n" + SECTIONS,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"imagegate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", prog="imagegate")
    _client_commands(sub)

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

    keys_sub = _actions(
        sub,
        "keys",
        "API keys (client) and token signing keys (server)",
        "imagegate keys create ci-upload --scope images:write --expires-in-days 90",
        "imagegate keys list",
        "imagegate keys public > jwt-public.pem    # on the server",
    )
    _client_key_actions(keys_sub)
    pub = _command(
        keys_sub,
        "public",
        "server: print the public key that verifies tokens",
        "imagegate keys public > jwt-public.pem",
        description=(
            "Print the public key that verifies tokens (PEM), creating the signing key in\n"
            "the data dir if there is none. Give it to the services that only verify\n"
            "tokens (IMAGEGATE_JWT_PUBLIC_KEY_FILE)."
        ),
    )
    _common(pub)
    rotate = _command(
        keys_sub,
        "rotate",
        "server: make a new token signing key",
        "imagegate keys rotate",
        description=(
            "Server administration: make a new token signing key. New tokens are signed\n"
            "with it once every replica can verify it (IMAGEGATE_JWT_KEY_ACTIVATION_SECONDS);\n"
            "the previous key stays published (JWKS) and keeps verifying until every token\n"
            "it signed has expired, so nobody is logged out. Prints the new key's id (kid)."
        ),
    )
    _common(rotate)

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

    web_sub = _actions(sub, "web", "the web page's files", "imagegate web export /srv/web")
    export = _command(
        web_sub,
        "export",
        "write the web page's files for a static file server (the gateway's NGINX)",
        "imagegate web export /srv/web",
        description="Write index.html, assets/ (content-hashed names, each with a .gz twin) and "
        "page-headers.conf (the page's Content-Security-Policy and other headers as NGINX "
        "add_header lines) into FOLDER. imagegate serve sends the same files itself.",
    )
    export.add_argument("folder", metavar="FOLDER", help="where to write them (created)")

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
        default=KAFKA_PARTITIONS,
        metavar="N",
        help="partitions of each topic: at most this many workers share the work "
        "(default: %(default)s)",
    )
    layout.add_argument(
        "--replication-factor",
        type=int,
        default=KAFKA_REPLICATION,
        metavar="N",
        help="copies of each partition, on different brokers (default: %(default)s)",
    )
    layout.add_argument(
        "--min-insync-replicas",
        type=int,
        default=KAFKA_MIN_INSYNC,
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
        default=KAFKA_CONNECT_TIMEOUT,
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
    # The commands are listed by SECTIONS (client, then server administration), not by
    # argparse's one alphabetical list.
    sub._choices_actions.clear()
    sub.help = argparse.SUPPRESS
    return parser


CONNECTION = """\
The server and the credentials: IMAGEGATE_URL and IMAGEGATE_API_KEY when set (for
scripts and CI), else what 'imagegate login' stored in
$XDG_CONFIG_HOME/imagegate/credentials.json (~/.config/imagegate/, mode 0600)."""


def _client(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help: str,
    description: str,
    *examples: str,
) -> argparse.ArgumentParser:
    return _command(sub, name, help, *examples, description=description + "\n\n" + CONNECTION)


def _client_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    login = _command(
        sub,
        "login",
        "log in to a server and keep the session",
        "imagegate login https://images.example.org            # asks for login and password",
        "imagegate login https://images.example.org --user alice",
        "printf '%s\\n' \"$KEY\" | imagegate login https://images.example.org --api-key",
        description=(
            "Log in to the server at URL. On a terminal the login and password are asked\n"
            "for (the password is not shown); otherwise they are the first lines of\n"
            "standard input. The URL and the session's refresh token (renewed as it is\n"
            "used) are kept in $XDG_CONFIG_HOME/imagegate/credentials.json\n"
            "(~/.config/imagegate/), readable only by you (mode 0600).\n"
            "\n"
            "With --api-key, an API key ('imagegate keys create') is kept instead of a\n"
            "session: for unattended use. Scripts can also skip login and set\n"
            "IMAGEGATE_URL and IMAGEGATE_API_KEY."
        ),
    )
    login.add_argument("url", metavar="URL", help="the server, e.g. https://images.example.org")
    login.add_argument("--user", metavar="LOGIN", help="the login (default: asked for)")
    login.add_argument(
        "--api-key",
        action="store_true",
        help="keep an API key (asked for, or the first line of standard input) instead",
    )
    logout = _client(
        sub,
        "logout",
        "end the session and forget it",
        "End the session on the server (its tokens stop working) and remove the stored\n"
        "credentials. A stored API key is only forgotten: revoke it with 'keys revoke'.",
        "imagegate logout",
        "imagegate logout --all     # every session of the account, on every machine",
    )
    logout.add_argument("--all", action="store_true", help="end every session of the account")
    whoami = _client(
        sub,
        "whoami",
        "the account you are logged in as",
        "Print the account you are logged in as, the server, and your images and bytes.",
        "imagegate whoami",
        "imagegate whoami --json",
    )
    whoami.add_argument("--json", action="store_true", help="one JSON object")
    push = _client(
        sub,
        "push",
        "upload images, with progress; resumable",
        "Upload files, and the files in folders (recursively; names starting with a dot\n"
        "are skipped), JOBS at a time. On a terminal: a progress bar per file being\n"
        "sent and one for the whole run (bytes, files, speed, time left), and each\n"
        "image's URL. Otherwise (or with --json): one JSON object per line, per file\n"
        '({"type": "file", "file", "status": stored|exists|failed|skipped, "url",\n'
        '"filename", "http_status", "error"}), then {"type": "summary", ...}.\n'
        "\n"
        "A file the server refuses (not an image, too large, ...) is reported with the\n"
        "server's reason and the others go on. A busy server (503, 429) is asked again\n"
        "after the time it says. Ctrl-C stops at once and prints what was done; run the\n"
        "same command again and the images already there are not stored twice (the\n"
        "server answers 'exists' for the same bytes). Exit status: 0 when every file\n"
        "is there, 1 when any failed, 130 when interrupted.",
        "imagegate push holiday/ --jobs 4",
        "imagegate push a.jpg b.png --private",
        "imagegate push scans/ --json > pushed.jsonl",
    )
    push.add_argument("paths", nargs="+", metavar="FILE|DIR", help="files and folders to send")
    push.add_argument(
        "--private", action="store_true", help="only you can see them (default: public)"
    )
    push.add_argument(
        "--jobs", type=int, default=4, metavar="N", help="files sent at once (default: 4)"
    )
    push.add_argument("--json", action="store_true", help="JSON lines, even on a terminal")
    ls = _client(
        sub,
        "ls",
        "list your images",
        "List your images, newest first: name, visibility, size in pixels, bytes,\n"
        "upload time and URL, separated by tabs (--json: one JSON object a line).",
        "imagegate ls",
        "imagegate ls --json | jq -r .filename",
    )
    ls.add_argument("--json", action="store_true", help="one JSON object per image and line")
    pull = _client(
        sub,
        "pull",
        "download one of your images",
        "Download one of your images (public or private) into FILE (default: its name,\n"
        "in the current folder; '-' for standard output).",
        "imagegate pull 21f2e729-7af7-4607-b6ca-c313b27985ae.jpg",
        "imagegate pull 21f2e729-7af7-4607-b6ca-c313b27985ae.jpg -o cat.jpg",
    )
    pull.add_argument("name", metavar="NAME", help="the image's name, <uuid>.<ext>")
    pull.add_argument("-o", "--output", metavar="FILE", help="where to write it")
    rm = _client(
        sub,
        "rm",
        "delete images",
        "Delete your images, by name. Exit status 1 when any could not be deleted.",
        "imagegate rm 21f2e729-7af7-4607-b6ca-c313b27985ae.jpg",
    )
    rm.add_argument("names", nargs="+", metavar="NAME", help="the images' names")


def _client_key_actions(keys_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    create = _client(
        keys_sub,
        "create",
        "client: make an API key for a script",
        "Make an API key for a script or a CI job: a Bearer credential for the image\n"
        "routes only, with the scopes given. The key is printed once, on standard\n"
        "output; keep it in your CI's secrets (IMAGEGATE_API_KEY).",
        "imagegate keys create ci-upload --scope images:write --expires-in-days 90",
        "imagegate keys create backup --scope images:read",
    )
    create.add_argument("name", metavar="NAME", help="what the key is for")
    create.add_argument(
        "--scope",
        action="append",
        choices=("images:read", "images:write"),
        metavar="SCOPE",
        help="images:read or images:write (repeatable; default: both)",
    )
    create.add_argument(
        "--expires-in-days",
        type=int,
        metavar="DAYS",
        help="the key's lifetime (default: the server's)",
    )
    create.add_argument("--json", action="store_true", help="the whole answer as JSON")
    keys_list = _client(
        keys_sub,
        "list",
        "client: list your API keys",
        "List your API keys: id, name, prefix, scopes, created, last used, expiry (never\n"
        "the secret), separated by tabs (--json: one JSON object a line).",
        "imagegate keys list",
    )
    keys_list.add_argument("--json", action="store_true", help="one JSON object per key")
    revoke = _client(
        keys_sub,
        "revoke",
        "client: revoke API keys",
        "Revoke API keys by id ('imagegate keys list'); they stop working at once.",
        "imagegate keys revoke 3f6c1d2e-...",
    )
    revoke.add_argument("ids", nargs="+", metavar="ID", help="the keys' ids")


def _is_client(args: argparse.Namespace) -> bool:
    if args.command == "keys":
        return args.keys_command in CLIENT_KEY_ACTIONS
    return args.command in CLIENT_COMMANDS


def main(argv: list[str] | None = None) -> None:
    """The ``imagegate`` command."""
    args = _parser().parse_args(argv)
    if _is_client(args):
        if "httpx" not in sys.modules:
            # httpx's own command-line tool (httpx._main) would load rich, click and pygments
            # on every import of httpx (about 0.35 s); this process never uses it.
            sys.modules["httpx._main"] = None  # type: ignore[assignment]
        from imagegate.client import commands

        code = commands.run(args)
        if code:
            raise SystemExit(code)
        return
    from imagegate import admin

    admin.run(args)
