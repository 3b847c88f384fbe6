"""Under `--log-format json` every stderr line is one JSON object, the last one included:
the fatal line of a config error, a database error, a signal, a refused command line, and
a crash (its traceback in the `exception` field)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from etl import cli
from etl.fake_api import FakeUltravox
from tests.conftest import AGENT_ID, TEST_API_KEY, run_console_script, write_config
from tests.test_ops import parse_json_lines
from tests.test_sync_e2e import add_generated_batch

KEY = {"ULTRAVOX_API_KEY": TEST_API_KEY}


def last_entry(stderr: str, *, event: str) -> dict[str, Any]:
    """The last line, after checking that every line is a JSON log object."""
    entries = parse_json_lines(stderr)
    last = entries[-1]
    assert last["level"] == "CRITICAL" and last["logger"] == "etl"
    assert last["event"] == event
    return last


def test_a_config_error_is_a_json_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"

    result = run_console_script("sync", "--log-format", "json", "--config", str(missing), env=KEY)

    assert result.exit_code == 2
    assert len(result.stderr.splitlines()) == 1
    assert last_entry(result.stderr, event="fatal")["message"] == (
        f"ultravox-etl: config error: {missing}: config file not found"
    )


@pytest.mark.parametrize(
    "args",
    [
        ["sync", "--log-format", "json", "--config", "etl.toml", "--batch", "nope"],
        ["sync", "--config", "etl.toml", "--log-format=json", "--batch", "nope"],
        ["sync", "--log-f", "json", "--config", "etl.toml", "--batch", "nope"],  # abbreviated
    ],
)
def test_a_refused_command_line_is_a_json_line_when_json_logs_were_asked_for(
    args: list[str],
) -> None:
    result = run_console_script(*args, env=KEY)

    assert result.exit_code == 2
    assert len(result.stderr.splitlines()) == 1
    assert last_entry(result.stderr, event="usage_error")["message"] == (
        "ultravox-etl sync: error: argument --batch: 'nope' is not a batch id (a UUID)"
    )


def test_a_database_error_ends_the_log_with_a_json_line(
    fake_api: FakeUltravox, tmp_path: Path
) -> None:
    batch = add_generated_batch(fake_api, 3)
    config = write_config(
        tmp_path / "etl.toml",
        fake_api.base_url,
        [(batch.agent_id, batch.batch_id)],
        database_url="postgresql://nobody@127.0.0.1:9/none?connect_timeout=2",
    )

    result = run_console_script(
        "sync", "-v", "--log-format", "json", "--config", str(config), env=KEY
    )

    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) >= 2  # the database line, then the fatal one
    message = last_entry(result.stderr, event="fatal")["message"]
    assert message.startswith("ultravox-etl: database error: postgresql://nobody@127.0.0.1:9/")


def test_a_signal_ends_the_log_with_a_json_line(tmp_path: Path) -> None:
    with FakeUltravox(api_key=TEST_API_KEY, latency_seconds=0.3) as fake:
        batch = add_generated_batch(fake, 200)
        config = write_config(
            tmp_path / "etl.toml",
            fake.base_url,
            [(batch.agent_id, batch.batch_id)],
            database_url=f"sqlite:///{tmp_path / 'etl.db'}",
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("ULTRAVOX")} | KEY
        script = str(Path(sys.executable).with_name("ultravox-etl"))
        proc = subprocess.Popen(
            [script, "sync", "--log-format", "json", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            text=True,
        )
        assert proc.stderr is not None
        started = proc.stderr.readline()  # "database …"
        while '"run_started"' not in started:
            started = proc.stderr.readline()
            assert started, "the run never started"
        while len(fake.requests) < 2:  # a page or two in
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        stdout, rest = proc.communicate(timeout=60)

    assert proc.returncode == 128 + signal.SIGTERM
    last = last_entry(rest, event="fatal")
    assert last["message"] == "ultravox-etl: stopped by SIGTERM"
    assert stdout == ""


def test_a_crash_under_json_logs_is_one_json_line_with_the_traceback(
    fake_api: FakeUltravox, run_cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_config(
        tmp_path / "etl.toml",
        fake_api.base_url,
        [(AGENT_ID, "0b7e4d52-1c9a-4f3e-8a6d-5e2f1c0b9a31")],
        database_url=f"sqlite:///{tmp_path / 'etl.db'}",
    )

    def crash(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("a bug\nover two lines")

    monkeypatch.setattr(cli, "sync", crash)

    result = run_cli("sync", "--log-format", "json", "--config", str(config))

    assert result.exit_code == 1
    last = last_entry(result.stderr, event="fatal")
    assert last["message"] == "ultravox-etl: crashed: RuntimeError: a bug\nover two lines"
    assert "Traceback" in last["exception"] and "in crash" in last["exception"]

    with pytest.raises(RuntimeError):  # text logs: Python's own traceback
        run_cli("sync", "--config", str(config))
