"""Config loading: real TOML files in tmp_path, the environment passed explicitly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from etl.config import (
    AgentRef,
    ApiSettings,
    BatchRef,
    Config,
    ConfigError,
    SyncSettings,
    load_config,
    runs_within_key_limit,
)

API_KEY = "uvx-secret-4b1d9e0c-never-print-me"
ENV = {"ULTRAVOX_API_KEY": API_KEY}
AGENT_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
BATCH_ID = "3c90c3cc-0d44-4b50-8888-8dd25736052a"
BATCH_ID_2 = "7c9e6679-7425-40de-944b-e07fc1f90ae7"

VALID = f"""\
[api]
base_url = "https://api.ultravox.ai"
page_size = 100
timeout_seconds = 30

[database]
url = "sqlite:///ultravox_etl.db"

[[batches]]
agent_id = "{AGENT_ID}"
batch_id = "{BATCH_ID}"
"""

BATCH_TABLE = f"""
[[batches]]
agent_id = "{AGENT_ID}"
batch_id = "{BATCH_ID}"
"""


def write(tmp_path: Path, text: str, name: str = "etl.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path, **kwargs: Any) -> str:
    """The message of the ConfigError that loading `path` raises (API key set unless given)."""
    kwargs.setdefault("environ", ENV)
    with pytest.raises(ConfigError) as raised:
        load_config(path, **kwargs)
    message = str(raised.value)
    assert "\n" not in message and "\r" not in message, message
    assert API_KEY not in message
    return message


# --- valid files ----------------------------------------------------------------------------


def test_valid_file(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)

    config = load_config(path, environ=ENV)

    assert config == Config(
        api=ApiSettings(base_url="https://api.ultravox.ai", page_size=100, timeout_seconds=30),
        database_url="sqlite:///ultravox_etl.db",
        batches=(BatchRef(agent_id=AGENT_ID, batch_id=BATCH_ID),),
        api_key=API_KEY,
        source=str(path),
    )
    assert not (tmp_path / "ultravox_etl.db").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["etl.toml"]


def test_path_may_be_a_string(tmp_path: Path) -> None:
    path = write(tmp_path, VALID)

    assert load_config(str(path), environ=ENV) == load_config(path, environ=ENV)


def test_every_api_setting_and_several_batches(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""\
[api]
base_url = "http://localhost:8080/proxy/"
page_size = 50
timeout_seconds = 12.5
max_attempts = 3
backoff_initial_seconds = 0
backoff_max_seconds = 4.0
retry_after_max_seconds = 60

[database]
url = "postgresql+psycopg://etl@db.internal/reports"

[[batches]]
agent_id = "{AGENT_ID}"
batch_id = "{BATCH_ID}"

[[batches]]
agent_id = "{AGENT_ID}"
batch_id = "{BATCH_ID_2}"
""",
    )

    config = load_config(path, environ=ENV)

    assert config.api == ApiSettings(
        base_url="http://localhost:8080/proxy/",
        page_size=50,
        timeout_seconds=12.5,
        max_attempts=3,
        backoff_initial_seconds=0,
        backoff_max_seconds=4.0,
        retry_after_max_seconds=60,
    )
    assert config.database_url == "postgresql+psycopg://etl@db.internal/reports"
    assert config.batches == (
        BatchRef(agent_id=AGENT_ID, batch_id=BATCH_ID),
        BatchRef(agent_id=AGENT_ID, batch_id=BATCH_ID_2),
    )


def test_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, BATCH_TABLE)

    config = load_config(path, environ=ENV)

    assert config.api.base_url == "https://api.ultravox.ai"
    assert config.api.page_size == 100
    assert config.api.timeout_seconds == 30.0
    assert config.api.max_attempts == 6
    assert config.api == ApiSettings()
    assert config.database_url == "sqlite:///ultravox_etl.db"
    assert config.batches == (BatchRef(agent_id=AGENT_ID, batch_id=BATCH_ID),)


def test_an_empty_file_is_refused_for_a_sync_and_gives_the_defaults_otherwise(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "")
    with pytest.raises(ConfigError) as refused:
        load_config(path, environ=ENV)
    assert str(refused.value) == (
        f"{path}: no [[batches]] and no [[agents]]: there is nothing to sync"
    )

    config = load_config(path, environ=ENV, require_batches=False)  # migrate, runs

    assert config.batches == ()
    assert config.api == ApiSettings()
    assert config.database_url == "sqlite:///ultravox_etl.db"


def test_uppercase_uuids_are_normalized_to_lowercase(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""\
[[batches]]
agent_id = "{AGENT_ID.upper()}"
batch_id = "3C90c3cc-0D44-4b50-8888-8DD25736052A"
""",
    )

    config = load_config(path, environ=ENV)

    assert config.batches == (BatchRef(agent_id=AGENT_ID, batch_id=BATCH_ID),)


# --- the database URL: flag > environment > file > default ---------------------------------

FILE_URL = "sqlite:///from-file.db"
ENV_URL = "postgresql+psycopg://etl@env-host/reports"
FLAG_URL = "sqlite:///from-flag.db"


@pytest.mark.parametrize(
    ("flag", "env_url", "in_file", "expected"),
    [
        (FLAG_URL, ENV_URL, True, FLAG_URL),
        (FLAG_URL, None, True, FLAG_URL),
        (FLAG_URL, None, False, FLAG_URL),
        (None, ENV_URL, True, ENV_URL),
        (None, ENV_URL, False, ENV_URL),
        (None, None, True, FILE_URL),
        (None, None, False, "sqlite:///ultravox_etl.db"),
        (None, "", True, FILE_URL),  # an empty variable counts as unset
    ],
)
def test_database_url_precedence(
    tmp_path: Path, flag: str | None, env_url: str | None, in_file: bool, expected: str
) -> None:
    text = BATCH_TABLE + (f'\n[database]\nurl = "{FILE_URL}"\n' if in_file else "")
    environ = dict(ENV)
    if env_url is not None:
        environ["ULTRAVOX_ETL_DATABASE_URL"] = env_url

    config = load_config(write(tmp_path, text), database_url=flag, environ=environ)

    assert config.database_url == expected


# --- the file itself ------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "etl.toml"

    assert config_error(path) == f"{path}: config file not found"


def test_directory_instead_of_file(tmp_path: Path) -> None:
    message = config_error(tmp_path)

    assert message.startswith(f"{tmp_path}: cannot read config file: ")


def test_bad_toml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[api]\nbase_url = "https://api.ultravox.ai"\npage_size = = 3\n')

    message = config_error(path)

    assert message.startswith(f"{path}: invalid TOML: ")
    assert "line 3" in message


def test_unterminated_string_is_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[api]\nbase_url = "https://api.ultravox.ai\n')

    message = config_error(path)

    assert message.startswith(f"{path}: invalid TOML: ")
    assert "line 2" in message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "etl.toml"
    path.write_bytes(b'[api]\nbase_url = "https://caf\xe9.example"\n')

    assert config_error(path) == f"{path}: config file is not UTF-8 text"


# --- unknown keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            'api_key = "x"\n' + BATCH_TABLE,
            "unknown key 'api_key' (expected one of: agents, api, batches, database, sync)",
        ),
        (
            '[databse]\nurl = "sqlite:///x.db"\n',
            "unknown key 'databse' (expected one of: agents, api, batches, database, sync)",
        ),
        (
            "[api]\npagesize = 10\n",
            "[api] unknown key 'pagesize' (expected one of: backoff_initial_seconds, "
            "backoff_max_seconds, base_url, concurrency, key_requests_per_second, max_attempts, "
            "max_requests_per_second, max_wait_seconds, page_size, retry_after_max_seconds, "
            "timeout_seconds)",
        ),
        (
            "[api.retry]\nattempts = 3\n",
            "[api] unknown key 'retry' (expected one of: backoff_initial_seconds, "
            "backoff_max_seconds, base_url, concurrency, key_requests_per_second, max_attempts, "
            "max_requests_per_second, max_wait_seconds, page_size, retry_after_max_seconds, "
            "timeout_seconds)",
        ),
        (
            '[database]\nuri = "sqlite:///x.db"\n',
            "[database] unknown key 'uri' (expected one of: url)",
        ),
        (
            BATCH_TABLE + f'\n[[batches]]\nagent_id = "{AGENT_ID}"\nbatch_id = "{BATCH_ID_2}"\n'
            'name = "spring campaign"\n',
            "[[batches]] #2 unknown key 'name' (expected one of: agent_id, batch_id, statuses)",
        ),
    ],
    ids=["top-level", "misspelled-table", "api", "api-subtable", "database", "batches"],
)
def test_unknown_key_names_key_and_table(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)

    assert config_error(path) == f"{path}: {expected}"


def test_api_key_in_the_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    path = write(tmp_path, f'[api]\napi_key = "{API_KEY}"\n')

    message = config_error(path)  # asserts the key is not in the message

    assert "unknown key 'api_key'" in message


# --- batches --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        '"not-a-uuid"',
        '""',
        '"3c90c3cc-0d44-4b50-8888-8dd25736052"',  # one digit short
        '"3c90c3cc-0d44-4b50-8888-8dd25736052ab"',  # one digit long
        '"3c90c3cc-0d44-4b50-8888-8dd25736052g"',  # not hex
        '"+3c90c3cc0d444b5088888dd25736052"',  # uuid.UUID alone reads this as 03c90c3c-…
        '" 3c90c3cc0d444b5088888dd25736052"',  # … and this one too
        '"3c90c3cc0d444b5088888dd25736052a"',  # no dashes
        '"{3c90c3cc-0d44-4b50-8888-8dd25736052a}"',
        '"3c90c3cc-0d44-4b50-8888-8dd25736052a "',
        "12345",
        "true",
    ],
)
def test_malformed_uuid_names_the_entry_and_key(tmp_path: Path, value: str) -> None:
    path = write(
        tmp_path, BATCH_TABLE + f'\n[[batches]]\nagent_id = "{AGENT_ID}"\nbatch_id = {value}\n'
    )

    message = config_error(path)

    assert message.startswith(f"{path}: [[batches]] #2: batch_id ")
    assert message.endswith(" is not a UUID")


def test_malformed_agent_id(tmp_path: Path) -> None:
    path = write(tmp_path, f'[[batches]]\nagent_id = "agent-1"\nbatch_id = "{BATCH_ID}"\n')

    assert config_error(path) == f"{path}: [[batches]] #1: agent_id 'agent-1' is not a UUID"


@pytest.mark.parametrize("key", ["agent_id", "batch_id"])
def test_missing_id(tmp_path: Path, key: str) -> None:
    other = "batch_id" if key == "agent_id" else "agent_id"
    path = write(tmp_path, f'[[batches]]\n{other} = "{BATCH_ID}"\n')

    assert config_error(path) == f"{path}: [[batches]] #1: missing {key}"


def test_duplicate_batch(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        BATCH_TABLE
        + f'\n[[batches]]\nagent_id = "{AGENT_ID}"\nbatch_id = "{BATCH_ID_2}"\n'
        + f'\n[[batches]]\nagent_id = "{AGENT_ID}"\nbatch_id = "{BATCH_ID.upper()}"\n',
    )

    assert config_error(path) == f"{path}: [[batches]] #3: batch_id {BATCH_ID} is listed twice"


def test_batches_must_be_an_array_of_tables(tmp_path: Path) -> None:
    path = write(tmp_path, f'[batches]\nagent_id = "{AGENT_ID}"\nbatch_id = "{BATCH_ID}"\n')

    assert config_error(path) == f"{path}: batches: expected an array of tables ([[batches]])"


def test_batch_entry_must_be_a_table(tmp_path: Path) -> None:
    path = write(tmp_path, f'batches = ["{BATCH_ID}"]\n')

    assert config_error(path) == f"{path}: [[batches]] #1: expected a table"


# --- types and ranges -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('page_size = "100"', "[api] page_size: expected int, got '100'"),
        ("page_size = true", "[api] page_size: expected int, got True"),
        ("page_size = 1.5", "[api] page_size: expected int, got 1.5"),
        ("page_size = 0", "[api] page_size: must be at least 1"),
        ("page_size = -5", "[api] page_size: must be at least 1"),
        ("max_attempts = 0", "[api] max_attempts: must be at least 1"),
        ('timeout_seconds = "30"', "[api] timeout_seconds: expected float, got '30'"),
        ("timeout_seconds = false", "[api] timeout_seconds: expected float, got False"),
        ("timeout_seconds = 0", "[api] timeout_seconds: must be greater than 0"),
        ("timeout_seconds = -1.0", "[api] timeout_seconds: must be greater than 0"),
        ("timeout_seconds = nan", "[api] timeout_seconds: expected float, got nan"),
        ("timeout_seconds = inf", "[api] timeout_seconds: expected float, got inf"),
        ("backoff_max_seconds = 0", "[api] backoff_max_seconds: must be greater than 0"),
        ("backoff_initial_seconds = -0.5", "[api] backoff_initial_seconds: must not be negative"),
        ("retry_after_max_seconds = -1", "[api] retry_after_max_seconds: must not be negative"),
        ("base_url = 5", "[api] base_url: expected str, got 5"),
        (
            'base_url = "ftp://api.ultravox.ai"',
            "[api] base_url: expected an http(s) URL, got 'ftp://api.ultravox.ai'",
        ),
        (
            'base_url = "api.ultravox.ai"',
            "[api] base_url: expected an http(s) URL, got 'api.ultravox.ai'",
        ),
        ('base_url = "https://"', "[api] base_url: expected an http(s) URL, got 'https://'"),
        (
            'base_url = "https://api.ultravox.ai/?key=1"',
            "[api] base_url: must not carry a query or fragment",
        ),
    ],
)
def test_api_value_errors(tmp_path: Path, line: str, expected: str) -> None:
    path = write(tmp_path, f"[api]\n{line}\n" + BATCH_TABLE)

    assert config_error(path) == f"{path}: {expected}"


@pytest.mark.parametrize("value", ['""', "5", "true"])
def test_database_url_must_be_a_non_empty_string(tmp_path: Path, value: str) -> None:
    path = write(tmp_path, f"[database]\nurl = {value}\n")

    assert config_error(path) == f"{path}: [database] url: expected a non-empty string"


@pytest.mark.parametrize("table", ["api", "database"])
def test_table_that_is_not_a_table(tmp_path: Path, table: str) -> None:
    path = write(tmp_path, f"{table} = 5\n")

    assert config_error(path) == f"{path}: [{table}]: expected a table"


# --- the API key ----------------------------------------------------------------------------


@pytest.mark.parametrize("environ", [{}, {"ULTRAVOX_API_KEY": ""}, {"ULTRAVOX_API_KEY": "  "}])
def test_missing_api_key(tmp_path: Path, environ: dict[str, str]) -> None:
    path = write(tmp_path, VALID)

    message = config_error(path, environ=environ)

    assert message == "environment: ULTRAVOX_API_KEY is not set (the Ultravox API key)"


def test_api_key_not_required(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID), require_api_key=False, environ={})

    assert config.api_key == ""
    assert config.batches == (BatchRef(agent_id=AGENT_ID, batch_id=BATCH_ID),)


def test_api_key_comes_only_from_the_environment(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID), environ={"ULTRAVOX_API_KEY": f"  {API_KEY}\n"})

    assert config.api_key == API_KEY


def test_api_key_is_not_in_repr(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, VALID), environ=ENV)

    assert config.api_key == API_KEY
    assert API_KEY not in repr(config)
    assert API_KEY not in str(config)


# --- agents, status filters, [sync], newer [api] keys ----------------------------------------


def test_agents_status_filters_and_sync_settings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
[api]
max_requests_per_second = 50
max_wait_seconds = 60
concurrency = 8

[sync]
lock_wait_seconds = 2.5
strict = true

[[agents]]
agent_id = "{AGENT_ID.upper()}"
statuses = ["ERROR", "EXPIRED", "ERROR"]

[[batches]]
agent_id = "{AGENT_ID}"
batch_id = "{BATCH_ID}"
statuses = ["SUCCESS"]
""",
    )
    config = load_config(path, environ=ENV)
    assert config.api.max_requests_per_second == 50
    assert config.api.max_wait_seconds == 60
    assert config.api.concurrency == 8
    assert config.sync == SyncSettings(lock_wait_seconds=2.5, strict=True)
    assert config.agents == (AgentRef(AGENT_ID, ("ERROR", "EXPIRED")),)
    assert config.batches == (BatchRef(AGENT_ID, BATCH_ID, ("SUCCESS",)),)


def test_defaults_of_the_newer_settings(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BATCH_TABLE), environ=ENV)
    assert config.api.max_requests_per_second == 20
    assert config.api.key_requests_per_second == 200
    assert config.api.concurrency == 4
    assert config.sync == SyncSettings(lock_wait_seconds=30.0, strict=False)
    assert config.agents == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f'[[agents]]\nagent_id = "{AGENT_ID}"\nstatuses = ["DONE"]\n',
            "[[agents]] #1: statuses: 'DONE' is not one of FUTURE, PENDING, SUCCESS, "
            "EXPIRED, ERROR",
        ),
        (
            f'[[agents]]\nagent_id = "{AGENT_ID}"\n[[agents]]\nagent_id = "{AGENT_ID}"\n',
            f"[[agents]] #2: agent_id {AGENT_ID} is listed twice",
        ),
        ('[[agents]]\nagent_id = "nope"\n', "[[agents]] #1: agent_id 'nope' is not a UUID"),
        (
            f'[[agents]]\nagent_id = "{AGENT_ID}"\nstatuses = "ERROR"\n',
            "[[agents]] #1: statuses: expected an array of strings",
        ),
        ("[sync]\nstrict = 1\n", "[sync] strict: expected bool, got 1"),
        ("[sync]\nlock_wait_seconds = -1\n", "[sync] lock_wait_seconds: must not be negative"),
        (
            "[sync]\nwait = 1\n",
            "[sync] unknown key 'wait' (expected one of: created_calls, lock_wait_seconds, strict)",
        ),
        ("[api]\nconcurrency = 0\n", "[api] concurrency: must be at least 1"),
        (
            "[api]\nmax_requests_per_second = 0\n",
            "[api] max_requests_per_second: must be greater than 0",
        ),
        (
            "[api]\nmax_requests_per_second = 300\n",
            "[api] key_requests_per_second (200) is below max_requests_per_second (300): "
            "one process alone would exceed the API key's limit",
        ),
        (
            "[api]\nkey_requests_per_second = 0\n",
            "[api] key_requests_per_second (0) is below max_requests_per_second (20): "
            "one process alone would exceed the API key's limit",
        ),
        (
            "[api]\nkey_requests_per_second = inf\n",
            "[api] key_requests_per_second: expected float, got inf",
        ),
    ],
    ids=["bad-status", "agent-twice", "agent-uuid", "statuses-type", "strict-type",
         "lock-wait", "sync-key", "concurrency", "rate", "rate-above-key-limit",
         "key-limit-zero", "key-limit-inf"],
)  # fmt: skip
def test_errors_in_the_newer_settings(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path, text)
    assert config_error(path) == f"{path}: {expected}"


def test_the_example_config_in_the_repository_is_valid() -> None:
    example = Path(__file__).resolve().parent.parent / "config.example.toml"
    config = load_config(example, environ=ENV)
    assert config.api.base_url == "https://api.ultravox.ai"
    assert len(config.batches) == 2 and config.batches[1].statuses == ("ERROR",)
    assert len(config.agents) == 1


# --- processes within the API key's limit (the Airflow pool's slots) -------------------------


@pytest.mark.parametrize(
    ("key_limit", "per_run", "runs"),
    [
        (200, 20, 10),  # the defaults
        (200, 30, 6),  # rounded down: 7 * 30 would be 210
        (200, 200, 1),  # one process may use the whole key
        (166, 25, 6),  # a third of an account's 500/s, shared by three keys
        (200, 0.5, 400),
        (0.3, 0.1, 3),  # as written: binary floats would make it 2
    ],
)
def test_runs_within_the_key_limit_are_the_key_limit_over_each_runs_cap_rounded_down(
    key_limit: float, per_run: float, runs: int
) -> None:
    api = ApiSettings(key_requests_per_second=key_limit, max_requests_per_second=per_run)

    assert runs_within_key_limit(api) == runs
    assert runs * per_run <= key_limit * (1 + 1e-12) < (runs + 1) * per_run


def test_the_key_limit_is_read_from_the_config(tmp_path: Path) -> None:
    path = write(tmp_path, "[api]\nkey_requests_per_second = 166\nmax_requests_per_second = 25\n")

    config = load_config(path, require_api_key=False, require_batches=False, environ={})

    assert config.api.key_requests_per_second == 166
    assert runs_within_key_limit(config.api) == 6
