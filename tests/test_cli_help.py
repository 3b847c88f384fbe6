"""Each command's `--help`: what it does, the API key where it matters, its exit codes, and
only the options that do something for it."""

from __future__ import annotations

import re

import pytest

from tests.conftest import run_console_script

COMMANDS = ("sync", "migrate", "runs", "airflow-pool", "demo", "fake-api")


def help_of(command: str) -> str:
    result = run_console_script(command, "--help")
    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    return result.stdout


def exit_codes(text: str) -> list[str]:
    """The codes listed under `exit codes:`, in order."""
    block = text.split("exit codes:\n", 1)[1]
    return re.findall(r"^  (\S+)\s", block, flags=re.MULTILINE)


@pytest.mark.parametrize(
    ("command", "codes", "says"),
    [
        (
            "sync",
            ["0", "1", "2", "75", "128+N"],
            "The Ultravox API key comes from $ULTRAVOX_API_KEY",
        ),
        ("migrate", ["0", "1", "2", "128+N"], "Needs no API key ($ULTRAVOX_API_KEY)"),
        ("runs", ["0", "1", "2", "128+N"], "Needs no API key ($ULTRAVOX_API_KEY)"),
        ("airflow-pool", ["0", "2"], "Needs no API key ($ULTRAVOX_API_KEY) and no database"),
        ("demo", ["0", "1", "2", "128+N"], "No account needed: $ULTRAVOX_API_KEY is not read"),
        ("fake-api", ["0", "1", "2"], "A fake Ultravox API on 127.0.0.1"),
    ],
)
def test_each_command_describes_itself_and_lists_its_exit_codes(
    command: str, codes: list[str], says: str
) -> None:
    text = help_of(command)

    usage, description = text.split("\n\n", 2)[:2]
    assert usage.startswith(f"usage: ultravox-etl {command} ")
    assert len(description) > 40  # a sentence, not just the usage line
    assert says in text
    assert exit_codes(text) == codes


@pytest.mark.parametrize(
    ("command", "offers_verbosity"),
    [("sync", True), ("demo", True), ("migrate", False), ("runs", False), ("airflow-pool", False)],
)
def test_verbose_and_quiet_are_offered_only_where_they_change_something(
    command: str, offers_verbosity: bool
) -> None:
    text = help_of(command)

    assert ("-v, --verbose" in text) is offers_verbosity
    assert ("-q, --quiet" in text) is offers_verbosity
    assert "--log-format" in text


def test_the_overview_lists_every_command() -> None:
    result = run_console_script("--help")

    assert result.exit_code == 0
    for command in COMMANDS:
        assert re.search(rf"^    {re.escape(command)}\s", result.stdout, flags=re.MULTILINE)
