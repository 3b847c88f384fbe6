"""Shared fixtures: the fake Ultravox API over real HTTP, real databases, the real CLI.

PostgreSQL and MariaDB/MySQL tests run whenever ULTRAVOX_ETL_TEST_POSTGRES_URL or
ULTRAVOX_ETL_TEST_MYSQL_URL is set (each test gets a fresh database created on that server)
and are skipped otherwise; if a variable is set but its server cannot be reached, they fail
rather than skip.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine, make_url

from etl import cli
from etl.extract import client as http_client
from etl.fake_api import FakeBatch, FakeUltravox
from etl.load.database import open_engine
from etl.report import logs

POSTGRES_ENV = "ULTRAVOX_ETL_TEST_POSTGRES_URL"
MYSQL_ENV = "ULTRAVOX_ETL_TEST_MYSQL_URL"
TEST_API_KEY = "test-key-7f3a9c1e-do-not-log"
AGENT_ID = "11111111-2222-4333-8444-555555555555"


@pytest.fixture
def fake_api() -> Iterator[FakeUltravox]:
    with FakeUltravox(api_key=TEST_API_KEY) as fake:
        yield fake


@pytest.fixture
def api_session() -> Iterator[requests.Session]:
    """A requests session sending the API key `fake_api` accepts."""
    with requests.Session() as session:
        session.headers["X-API-Key"] = TEST_API_KEY
        yield session


@pytest.fixture
def retry_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Retry pauses are recorded instead of slept, so fault tests stay fast."""
    waits: list[float] = []
    monkeypatch.setattr(http_client, "retry_sleep", waits.append)
    return waits


@dataclass(frozen=True)
class TestServer:
    """How the tests get a fresh database on a database server (one per backend)."""

    env: str
    """The variable with a URL of the server (a database on it to connect to)."""
    create: str
    drop: str


TEST_SERVERS = {
    "postgresql": TestServer(
        POSTGRES_ENV, 'CREATE DATABASE "{name}"', 'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    ),
    "mysql": TestServer(
        MYSQL_ENV,
        "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin",
        "DROP DATABASE IF EXISTS `{name}`",
    ),
}


@pytest.fixture(params=["sqlite", *TEST_SERVERS])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL of an empty database: a SQLite file, or a fresh database on each server whose
    variable is set (skipped otherwise; CI sets them all and checks the servers answer)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'etl.db'}"
        return
    server = TEST_SERVERS[request.param]
    admin_url = os.environ.get(server.env)
    if not admin_url:
        pytest.skip(f"{server.env} is not set")
    name = f"etl_test_{uuid.uuid4().hex[:12]}"
    admin = open_engine(admin_url).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(server.create.format(name=name)))
    try:
        yield make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(server.drop.format(name=name)))
        admin.engine.dispose()


@pytest.fixture
def engine(database_url: str) -> Iterator[Engine]:
    eng = open_engine(database_url)
    yield eng
    eng.dispose()


def add_batch(fake: FakeUltravox, calls: list[dict[str, Any]]) -> FakeBatch:
    """A batch of hand-made calls; their `batchId` is filled in."""
    batch_id = str(uuid.uuid4())
    return fake.add_batch(AGENT_ID, batch_id, [{**c, "batchId": batch_id} for c in calls])


def write_config(
    path: Path,
    base_url: str,
    batches: list[tuple[str, str]],
    *,
    database_url: str | None = None,
    sync: Mapping[str, Any] | None = None,
    **api: Any,
) -> Path:
    """A config file in the documented shape; `api` adds keys to [api], `sync` to [sync].

    The created-calls stream is off unless `sync` turns it on: most tests look at the
    scheduled calls alone (request counts, summary lines); tests/test_created_calls.py and
    the headline end-to-end tests run both streams.
    """
    sync = {"created_calls": False, **(sync or {})}
    lines = ["[api]", f'base_url = "{base_url}"']
    api.setdefault("page_size", 10)
    api.setdefault("timeout_seconds", 5)
    # The fake API has no rate limit: a high cap, and a key limit the config accepts with it.
    api.setdefault("max_requests_per_second", 1000.0)
    api.setdefault("key_requests_per_second", api["max_requests_per_second"])
    for key, value in api.items():
        lines.append(f"{key} = {value!r}" if not isinstance(value, str) else f'{key} = "{value}"')
    if database_url is not None:
        lines += ["", "[database]", f'url = "{database_url}"']
    lines += ["", "[sync]", *(f"{k} = {json.dumps(v)}" for k, v in sync.items())]
    for agent_id, batch_id in batches:
        lines += ["", "[[batches]]", f'agent_id = "{agent_id}"', f'batch_id = "{batch_id}"']
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], retry_waits: list[float]
) -> Any:
    """Run `ultravox-etl ARGS` in this process (real HTTP, real database), API key set."""

    def run(*args: str, api_key: str | None = TEST_API_KEY) -> CliResult:
        if api_key is None:
            monkeypatch.delenv("ULTRAVOX_API_KEY", raising=False)
        else:
            monkeypatch.setenv("ULTRAVOX_API_KEY", api_key)
        monkeypatch.delenv("ULTRAVOX_ETL_DATABASE_URL", raising=False)
        capsys.readouterr()
        code = cli.main(list(args))
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


@pytest.fixture
def capture_all_logs(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> Any:
    """Every logger at DEBUG (urllib3 and SQLAlchemy too, tracebacks included) is captured
    in `caplog` during run_cli, not only what -v prints: for the secret scans."""
    configure = logs.configure

    def configure_and_capture(**kwargs: Any) -> Any:
        handler = configure(**kwargs)
        logging.getLogger().addHandler(caplog.handler)
        logging.getLogger().setLevel(logging.DEBUG)
        return handler

    monkeypatch.setattr(logs, "configure", configure_and_capture)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="sqlalchemy")  # every statement and row
    return caplog


def run_console_script(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> CliResult:
    """Run the installed `ultravox-etl` entry point in a child process (in `cwd`)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ULTRAVOX")}
    full_env.update(env or {})
    script = Path(sys.executable).with_name("ultravox-etl")
    proc = subprocess.run(
        [str(script), *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=120,
        check=False,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def dump_all_tables(engine: Engine) -> str:
    """Every row of every table of the database, as text (for the secret scans)."""
    names = sorted(inspect(engine).get_table_names())
    assert "scheduled_calls" in names and "rejected_records" in names
    quote = engine.dialect.identifier_preparer.quote
    return "\n".join(
        f"{name}: {tuple(row)!r}"
        for name in names
        for row in rows(engine, f"SELECT * FROM {quote(name)}")
    )


def rows(engine: Engine, sql: str, **params: Any) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(text(sql), params))
