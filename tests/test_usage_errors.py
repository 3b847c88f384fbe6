"""Usage errors through the installed console script: exit 2, one line, nothing written.

Unattended runs mail or ship stderr line by line; a usage or configuration error must be
one line that says what to fix, never a usage block or a traceback, and must leave no
trace: no SQLite file, no table, no run record, no API request it did not need.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from sqlalchemy import Engine

from etl.fake_api import FakeUltravox
from tests.conftest import AGENT_ID, TEST_API_KEY, CliResult, run_console_script, write_config
from tests.test_cli_e2e import assert_nothing_written
from tests.test_sync_e2e import add_generated_batch

KEY = {"ULTRAVOX_API_KEY": TEST_API_KEY}
SUPPORTED_FORMS = ("sqlite:///relative/file.db", "postgresql://user:password@host:5432/dbname")


def assert_one_line_error(result: CliResult, prefix: str) -> str:
    """Exit 2, nothing on stdout, exactly one stderr line starting with `prefix`; the line."""
    assert result.exit_code == 2, result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert result.stderr.endswith("\n")
    assert lines[0].startswith(prefix), lines[0]
    return lines[0]


def assert_only_the_config_in(folder: Path, config: Path) -> None:
    """The command created no file at all beside the config (no SQLite file, no locks)."""
    assert sorted(folder.iterdir()) == [config]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """An empty folder the commands run in: a file a command creates shows up here."""
    folder = tmp_path / "work"
    folder.mkdir()
    return folder


def config_in(workdir: Path, **kwargs: str) -> Path:
    return write_config(
        workdir / "etl.toml",
        "http://127.0.0.1:9",
        [(AGENT_ID, str(uuid.uuid4()))],
        database_url=kwargs.get("database_url", "sqlite:///etl.db"),
    )


def run_in(workdir: Path, *args: str) -> CliResult:
    return run_console_script(*args, env=KEY, cwd=workdir)


# -- database URLs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "where"),
    [
        *((command, "flag") for command in ("sync", "migrate", "runs", "demo")),
        *((command, "file") for command in ("sync", "migrate", "runs")),  # demo reads no file
    ],
)
def test_a_database_url_that_does_not_parse_is_one_line_naming_the_supported_forms(
    command: str, where: str, workdir: Path
) -> None:
    bad = "not a url"
    config = config_in(workdir, database_url=bad if where == "file" else "sqlite:///etl.db")
    args = [command] if command == "demo" else [command, "--config", str(config)]
    if where == "flag":
        args += ["--database-url", bad]

    line = assert_one_line_error(run_in(workdir, *args), "ultravox-etl: config error: ")

    assert "database URL is not valid; expected one of: " in line
    assert all(form in line for form in SUPPORTED_FORMS)
    assert_only_the_config_in(workdir, config)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("oracle://scott:tiger@db.internal/orcl", "database 'oracle' is not supported"),
        (
            "postgresql+psycopg2://etl@db.internal/reporting",
            "database 'postgresql+psycopg2' is not supported",
        ),
        # The SQLite backend's dialect, with a driver this install does not have.
        ("sqlite+pysqlcipher:///etl.db", "database driver 'sqlite+pysqlcipher' is not installed"),
    ],
)
@pytest.mark.parametrize("command", ["sync", "migrate", "runs"])
def test_an_unsupported_database_or_driver_is_one_line_naming_the_supported_forms(
    url: str, says: str, command: str, workdir: Path
) -> None:
    config = config_in(workdir, database_url=url)

    line = assert_one_line_error(
        run_in(workdir, command, "--config", str(config)), "ultravox-etl: config error: "
    )

    assert says in line
    assert all(form in line for form in SUPPORTED_FORMS)
    assert "tiger" not in line
    assert_only_the_config_in(workdir, config)


# -- argparse -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["sync", "--config", "etl.toml", "--batch", "nope"],
            "ultravox-etl sync: error: argument --batch: 'nope' is not a batch id (a UUID)",
        ),
        (["sync"], "ultravox-etl sync: error: the following arguments are required: --config"),
        (
            ["sync", "--config", "etl.toml", "-v", "-q"],
            "ultravox-etl sync: error: argument -q/--quiet: not allowed with argument -v/--verbose",
        ),
        (
            ["migrate", "--config", "etl.toml", "-v"],
            "ultravox-etl migrate: error: unrecognized arguments: -v",
        ),
        (
            ["runs", "--config", "etl.toml", "--limit", "0"],
            "ultravox-etl runs: error: argument --limit: must be at least 1",
        ),
        (
            ["runs", "--config", "etl.toml", "--log-format", "xml"],
            "ultravox-etl runs: error: argument --log-format: invalid choice: 'xml' "
            "(choose from 'text', 'json')",
        ),
        (["demo", "-q", "--full"], "ultravox-etl demo: error: unrecognized arguments: --full"),
        (
            ["fake-api", "--port", "eighty"],
            "ultravox-etl fake-api: error: argument --port: invalid int value: 'eighty'",
        ),
        (
            ["report"],
            "ultravox-etl: error: argument COMMAND: invalid choice: 'report' "
            "(choose from 'sync', 'migrate', 'runs', 'airflow-pool', 'demo', 'fake-api')",
        ),
        (
            ["airflow-pool", "--config", "etl.toml", "--name", " "],
            "ultravox-etl airflow-pool: error: argument --name: "
            "expected 1 to 256 characters, not only blanks",
        ),
        (
            ["airflow-pool", "--config", "etl.toml", "--database-url", "sqlite:///etl.db"],
            "ultravox-etl airflow-pool: error: unrecognized arguments: "
            "--database-url sqlite:///etl.db",
        ),
    ],
)
def test_every_argparse_error_is_one_line_naming_the_command(
    args: list[str], line: str, workdir: Path
) -> None:
    result = run_in(workdir, *args)

    assert assert_one_line_error(result, line.split(": error: ")[0]) == line
    assert list(workdir.iterdir()) == []


def test_a_metrics_file_in_a_folder_that_does_not_exist_is_one_line(workdir: Path) -> None:
    config = config_in(workdir)
    target = workdir / "missing" / "ultravox_etl.prom"

    result = run_in(workdir, "sync", "--config", str(config), "--metrics-file", str(target))

    assert assert_one_line_error(result, "ultravox-etl sync: error: ") == (
        "ultravox-etl sync: error: argument --metrics-file: "
        f"the folder {target.parent} does not exist"
    )
    assert_only_the_config_in(workdir, config)


# -- the config ---------------------------------------------------------------------------------


def test_a_config_with_no_batches_and_no_agents_is_refused_naming_the_file(
    workdir: Path,
) -> None:
    config = write_config(
        workdir / "etl.toml", "http://127.0.0.1:9", [], database_url="sqlite:///etl.db"
    )

    result = run_in(workdir, "sync", "--config", str(config))

    assert assert_one_line_error(result, "ultravox-etl: config error: ") == (
        f"ultravox-etl: config error: {config}: no [[batches]] and no [[agents]]: "
        "there is nothing to sync"
    )
    assert_only_the_config_in(workdir, config)
    # Commands that only touch the database take such a config.
    assert run_in(workdir, "runs", "--config", str(config)).exit_code == 0


def test_a_rate_cap_above_the_key_limit_is_one_line_and_sizes_no_pool(workdir: Path) -> None:
    config = write_config(
        workdir / "etl.toml",
        "http://127.0.0.1:9",
        [],
        max_requests_per_second=250.0,
        key_requests_per_second=200.0,
    )

    result = run_in(workdir, "airflow-pool", "--config", str(config))

    assert assert_one_line_error(result, "ultravox-etl: config error: ") == (
        f"ultravox-etl: config error: {config}: [api] key_requests_per_second (200) is below "
        "max_requests_per_second (250): one process alone would exceed the API key's limit"
    )
    assert_only_the_config_in(workdir, config)


def test_a_batch_nobody_knows_is_one_line_after_the_agents_lists_and_writes_nothing(
    fake_api: FakeUltravox, engine: Engine, database_url: str, tmp_path: Path
) -> None:
    configured = add_generated_batch(fake_api, 3, seed=1)
    listed = add_generated_batch(fake_api, 2, seed=2)
    config = write_config(
        tmp_path / "etl.toml",
        fake_api.base_url,
        [(configured.agent_id, configured.batch_id)],
        database_url=database_url,
    )
    with config.open("a") as f:
        f.write(f'\n[[agents]]\nagent_id = "{AGENT_ID}"\n')
    unknown = str(uuid.uuid4())

    result = run_console_script(
        "sync", "--config", str(config), "--batch", listed.batch_id, "--batch", unknown, env=KEY
    )

    assert assert_one_line_error(result, "ultravox-etl: config error: ") == (
        f"ultravox-etl: config error: {config}: --batch {unknown} is neither in [[batches]] "
        "nor listed for an agent"
    )
    assert_nothing_written(engine)  # no SQLite file, no table: no run row either
    agent_list = f"/api/agents/{AGENT_ID}/scheduled_batches"
    assert fake_api.requests and all(r.path == agent_list for r in fake_api.requests)


def test_a_batch_an_agent_lists_is_synced_alone(
    fake_api: FakeUltravox, engine: Engine, database_url: str, tmp_path: Path
) -> None:
    configured = add_generated_batch(fake_api, 3, seed=1)
    listed = add_generated_batch(fake_api, 4, seed=2)
    config = write_config(
        tmp_path / "etl.toml",
        fake_api.base_url,
        [(configured.agent_id, configured.batch_id)],
        database_url=database_url,
    )
    with config.open("a") as f:
        f.write(f'\n[[agents]]\nagent_id = "{AGENT_ID}"\n')

    result = run_console_script(
        "sync", "--config", str(config), "--batch", listed.batch_id, env=KEY
    )

    assert result.exit_code == 0, result.stderr
    assert [line.split(":")[0] for line in result.stdout.splitlines()] == [
        f"batch {listed.batch_id}",
        "run 1",
    ]
    assert not any(configured.batch_id in r.path for r in fake_api.requests)
