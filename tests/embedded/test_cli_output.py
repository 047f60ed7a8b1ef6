"""The imagegate command prints only its answer, and its help is written for people."""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from imagegate import cli
from tests.support.cli import imagegate

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


def answer(*args: str, stdin: str = "", env: dict[str, str] | None = None) -> str:
    """Runs an admin command that must succeed silently but for its answer on stdout."""
    done = imagegate(*args, stdin=stdin, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr
    return done.stdout


def test_admin_commands_print_only_their_answer(tmp_path: Path) -> None:
    data = ("--data-dir", str(tmp_path / "data"))
    # A fresh data dir: the schema is created on the way, and nothing says so on stdout/stderr.
    assert answer("user", "list", *data) == ""
    assert re.fullmatch(
        r"database schema is up to date \(revision \w+\)\n", answer("db", "upgrade", *data)
    )
    added = answer("user", "add", "Alice", *data, stdin="correct horse battery\n")
    assert re.fullmatch(rf"created alice \({UUID}\)\n", added)
    listed = answer("user", "list", *data)
    assert re.fullmatch(rf"alice\t{UUID}\t\S+\t0 images\t0 bytes\n", listed)
    # A server's IMAGEGATE_LOG_LEVEL (shared env files) does not make admin commands chatty.
    assert answer("user", "list", *data, env={"IMAGEGATE_LOG_LEVEL": "info"}) == listed
    key = answer("keys", "public", *data)
    assert key.startswith("-----BEGIN PUBLIC KEY-----\n") and key.endswith(
        "-----END PUBLIC KEY-----\n"
    )
    assert json.loads(answer("openapi", *data))["paths"]
    certs = answer("tls", "self-signed", str(tmp_path / "tls"))
    assert certs.splitlines() == [
        str(tmp_path / "tls" / "cert.pem"),
        str(tmp_path / "tls" / "key.pem"),
    ]
    assert answer("user", "delete", "ALICE", *data) == "deleted alice and 0 images\n"


def test_a_fresh_database_says_it_was_upgraded(tmp_path: Path) -> None:
    out = answer("db", "upgrade", "--data-dir", str(tmp_path / "data"))
    assert re.fullmatch(r"database schema upgraded from empty to revision \w+\n", out)


def test_log_level_flag_shows_logs_again(tmp_path: Path) -> None:
    done = imagegate("user", "list", "--data-dir", str(tmp_path / "data"), "--log-level", "info")
    assert done.returncode == 0
    assert "INFO imagegate: database schema upgraded from empty" in done.stderr
    assert done.stdout == ""


def test_errors_are_one_line_on_stderr(tmp_path: Path) -> None:
    done = imagegate("user", "delete", "nobody", "--data-dir", str(tmp_path / "data"))
    assert done.returncode != 0
    assert done.stdout == ""
    assert done.stderr == "error: no such user: nobody\n"


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command and subcommand of the parser, found by walking it, so a new command
    without help text fails the test below."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*path, name), sub
                yield from _commands(sub, (*path, name))


def _help(args: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        cli.main([*args, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def test_help_is_written_for_people(capsys: pytest.CaptureFixture[str]) -> None:
    top = _help((), capsys)
    assert "``" not in top and "seed" not in top.lower()
    assert "examples:" in top
    commands = list(_commands(cli._parser()))
    assert {c[0] for c, _ in commands} >= {"serve", "user", "db", "keys", "tls", "openapi"}
    for command, _ in commands:
        text = _help(command, capsys)
        assert "``" not in text and "seed" not in text.lower(), command
        # An example that runs this very command, in an "example(s):" section at the end.
        examples = text.split("\nexample")[-1]
        assert re.match(r"s?:\n", examples), (command, text)
        assert "imagegate " + " ".join(command) in examples, (command, examples)


def test_help_from_the_installed_command() -> None:
    done = imagegate("--help")
    assert done.returncode == 0
    assert done.stdout.startswith("usage: imagegate")
    assert "``" not in done.stdout
