"""Passwords in database URLs never show: not in logs at any level, error lines, `runs`,
the metrics file or the database, also when the database cannot be reached.

A PostgreSQL URL can carry a password in three places: the user info
(`postgresql://user:pw@…`), the `password` query parameter and `sslpassword` (the
passphrase of the client key). Each gets a planted value, and every output is searched.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from etl.fake_api import FakeUltravox
from tests.conftest import dump_all_tables, write_config
from tests.test_sync_e2e import add_generated_batch

PLANTED = ("UserInfoSecret-5c1e", "QuerySecret-9b7d", "SslSecret-2f4a")


def with_planted_passwords(database_url: str, *, port: int | None = None) -> str:
    """The test database's URL with a password in each place a URL can carry one (the
    server trusts local connections, so they do not stop it from connecting)."""
    url = make_url(database_url).set(drivername="postgresql", password=PLANTED[0])
    if port is not None:
        url = url.set(port=port)
    url = url.update_query_dict({"password": PLANTED[1], "sslpassword": PLANTED[2]})
    return url.render_as_string(hide_password=False)


def assert_no_secret(*outputs: str) -> None:
    for output in outputs:
        for secret in PLANTED:
            assert secret not in output


def logged(caplog: pytest.LogCaptureFixture) -> str:
    """Every record every logger emitted (DEBUG included): message, arguments, traceback."""
    return "\n".join(
        [caplog.text, *(f"{r.name} {r.getMessage()} {r.args!r}" for r in caplog.records)]
    )


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_url_passwords_never_show_in_any_output(
    fake_api: FakeUltravox,
    engine: Engine,
    database_url: str,
    run_cli: Any,
    capture_all_logs: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    batch = add_generated_batch(fake_api, 15)
    secret_url = with_planted_passwords(database_url)
    config = write_config(
        tmp_path / "etl.toml",
        fake_api.base_url,
        [(batch.agent_id, batch.batch_id)],
        database_url=secret_url,
    )
    metrics = tmp_path / "etl.prom"
    outputs: list[str] = []

    def run(*args: str, exit_code: int) -> None:
        result = run_cli(*args)
        assert result.exit_code == exit_code, result.stderr
        outputs.extend([result.stdout, result.stderr])

    # Connected.
    run("migrate", "--config", str(config), exit_code=0)
    run("sync", "-v", "--config", str(config), "--metrics-file", str(metrics), exit_code=0)
    run("sync", "-v", "--log-format", "json", "--config", str(config), exit_code=0)
    run("runs", "--config", str(config), exit_code=0)
    run("runs", "--config", str(config), "--json", exit_code=0)
    connected = "\n".join(outputs)
    # One spelling of the URL in the log: the driver is not named, the password is hidden.
    host = make_url(database_url)
    assert f"database postgresql://{host.username}:***@{host.host}:{host.port}/" in connected
    assert "password=***" in connected and "sslpassword=***" in connected
    assert "postgresql+psycopg" not in connected

    # Nothing answers on the port: the connection error names the database, masked.
    closed = with_planted_passwords(database_url, port=9)
    for command, code in (("sync", 1), ("migrate", 1), ("runs", 1)):
        args = [command, "--config", str(config), "--database-url", closed]
        if command == "sync":
            args += ["-v", "--metrics-file", str(metrics)]
        run(*args, exit_code=code)
    refused = outputs[-6:]
    for stderr in refused[1::2]:
        (line,) = stderr.splitlines()[-1:]
        assert line.startswith("ultravox-etl: database error: postgresql://"), line
        assert ":9/" in line

    assert_no_secret(*outputs, logged(capture_all_logs), metrics.read_text())
    assert_no_secret(dump_all_tables(engine))
    assert json.loads(outputs[8])[0]["status"] == "succeeded"  # `runs --json` read the runs
