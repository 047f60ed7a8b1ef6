"""The client commands and --help load no part of the server (the start-up time goal of
`imagegate --help` and the client commands: argparse, httpx, and nothing heavy)."""

from __future__ import annotations

import json
import subprocess
import sys

from imagegate import cli, settings
from imagegate.events import setup as event_setup

HEAVY = (
    "fastapi",
    "sqlalchemy",
    "alembic",
    "boto3",
    "botocore",
    "pydantic",
    "PIL",
    "uvicorn",
    "confluent_kafka",
    "cryptography",
    "asyncio",
    "rich",
    "click",
    "pygments",
)


def _loaded_after(code: str) -> set[str]:
    probe = (
        "import sys, json\n"
        f"{code}\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    return set(json.loads(done.stdout))


def test_help_and_the_client_commands_load_nothing_of_the_server() -> None:
    assert _loaded_after("import imagegate.cli as c; c._parser().format_help()") == set()
    # What a client command runs: the parser, the client library and its commands module, as
    # imagegate.cli.main imports them.
    client = (
        "import imagegate.cli as c\n"
        "args = c._parser().parse_args(['whoami'])\n"
        "assert c._is_client(args)\n"
        "sys.modules['httpx._main'] = None\n"
        "from imagegate.client import commands"
    )
    assert _loaded_after(client) == set()


def test_the_parser_mirrors_the_server_constants() -> None:
    assert cli.SERVICE_ROLES == settings.SERVICE_ROLES
    assert (cli.KAFKA_PARTITIONS, cli.KAFKA_REPLICATION, cli.KAFKA_MIN_INSYNC) == (
        event_setup.DEFAULT_PARTITIONS,
        event_setup.DEFAULT_REPLICATION,
        event_setup.DEFAULT_MIN_INSYNC,
    )
    assert cli.KAFKA_CONNECT_TIMEOUT == event_setup.CONNECT_TIMEOUT_SECONDS


def test_which_commands_are_the_client_s() -> None:
    parse = cli._parser().parse_args
    for argv in (["login", "http://x"], ["push", "a"], ["ls"], ["keys", "list"], ["rm", "n"]):
        assert cli._is_client(parse(argv)), argv
    for argv in (["keys", "public"], ["keys", "rotate"], ["serve"], ["user", "list"]):
        assert not cli._is_client(parse(argv)), argv
