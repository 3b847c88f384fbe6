"""Configuration: the TOML file, the environment and command-line overrides, validated once.

Every problem is reported as a :class:`ConfigError` whose message names the file and the key,
so the CLI can print it as one line and exit 2 before anything is written.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

API_KEY_ENV = "ULTRAVOX_API_KEY"
DATABASE_URL_ENV = "ULTRAVOX_ETL_DATABASE_URL"
DEFAULT_BASE_URL = "https://api.ultravox.ai"
DEFAULT_DATABASE_URL = "sqlite:///ultravox_etl.db"


class ConfigError(Exception):
    """The configuration cannot be used; the message says what and where."""


@dataclass(frozen=True)
class ApiSettings:
    base_url: str = DEFAULT_BASE_URL
    page_size: int = 100
    timeout_seconds: float = 30.0
    max_attempts: int = 6
    """Attempts per request, the first one included, before the batch fails."""
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    retry_after_max_seconds: float = 120.0
    """A longer `Retry-After` is cut to this, so one answer cannot stall a cron run for hours."""
    max_wait_seconds: float = 300.0
    """Total pause between the attempts of one request before the batch fails."""
    max_requests_per_second: float = 20.0
    """Client-side cap of one process (a CLI run, an Airflow task), shared by its threads,
    so the job never causes 429s itself."""
    key_requests_per_second: float = 200.0
    """Ultravox's limit for the API key (200/s), shared by every process using the key: it
    sizes the Airflow pool (runs_within_key_limit). Keys of one account share 500/s: with
    several keys syncing at once, give each its share."""
    concurrency: int = 4
    """Batches fetched at the same time (still within max_requests_per_second)."""


@dataclass(frozen=True)
class SyncSettings:
    lock_wait_seconds: float = 30.0
    """How long a run waits for a batch another run is syncing before it skips it."""
    strict: bool = False
    """A batch with a rejected record fails instead of loading the rest."""
    created_calls: bool = True
    """Also list the calls each batch created, with their outcomes (table `calls`)."""


@dataclass(frozen=True)
class BatchRef:
    """One scheduled call batch to sync."""

    agent_id: str
    batch_id: str
    statuses: tuple[str, ...] = ()
    """Only calls with these statuses (the API's `status` filter); empty means all."""


@dataclass(frozen=True)
class AgentRef:
    """Every batch of an agent, as its batch list says at the time of the run."""

    agent_id: str
    statuses: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    api: ApiSettings
    database_url: str = field(repr=False)  # may carry a password
    batches: tuple[BatchRef, ...]
    agents: tuple[AgentRef, ...] = ()
    sync: SyncSettings = field(default_factory=SyncSettings)
    api_key: str = field(default="", repr=False)
    source: str = "<defaults>"


_API_KEYS: dict[str, type] = {
    "base_url": str,
    "page_size": int,
    "timeout_seconds": float,
    "max_attempts": int,
    "backoff_initial_seconds": float,
    "backoff_max_seconds": float,
    "retry_after_max_seconds": float,
    "max_wait_seconds": float,
    "max_requests_per_second": float,
    "key_requests_per_second": float,
    "concurrency": int,
}
_SYNC_KEYS: dict[str, type] = {"lock_wait_seconds": float, "strict": bool, "created_calls": bool}
_TOP_LEVEL_KEYS = {"api", "database", "sync", "batches", "agents"}
_DATABASE_KEYS = {"url"}
_BATCH_KEYS = {"agent_id", "batch_id", "statuses"}
_AGENT_KEYS = {"agent_id", "statuses"}
STATUS_FILTER_VALUES = ("FUTURE", "PENDING", "SUCCESS", "EXPIRED", "ERROR")
# The canonical 8-4-4-4-12 form only. uuid.UUID alone is too lenient: it drops every "-",
# "{}", "urn:uuid:", and int(..., 16) accepts a sign or whitespace, so "+" followed by 31
# hex digits silently became a different UUID instead of a config error.
UUID_PATTERN = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)


def load_config(
    path: str | os.PathLike[str],
    *,
    database_url: str | None = None,
    require_api_key: bool = True,
    require_batches: bool = True,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read and validate the config file; apply the environment and `database_url` override.

    Precedence of the database URL: `database_url` (the CLI flag), then
    `ULTRAVOX_ETL_DATABASE_URL`, then `[database] url`, then the SQLite default.
    `require_api_key` and `require_batches` (at least one `[[batches]]` or `[[agents]]`):
    what a sync needs, and what commands that only touch the database (migrate, runs) don't.
    """
    env = os.environ if environ is None else environ
    where = str(path)
    try:
        text = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{where}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read config file: {exc.strerror}") from None
    try:
        data = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{where}: config file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: invalid TOML: {exc}") from None
    return parse_config(
        data,
        source=where,
        database_url=database_url,
        require_api_key=require_api_key,
        require_batches=require_batches,
        environ=env,
    )


def parse_config(
    data: Mapping[str, Any],
    *,
    source: str,
    database_url: str | None = None,
    require_api_key: bool = True,
    require_batches: bool = True,
    environ: Mapping[str, str],
) -> Config:
    """Validate an already-parsed TOML document."""
    _reject_unknown(data, _TOP_LEVEL_KEYS, source, "")
    api = _parse_api(_table(data, "api", source), source)

    db_table = _table(data, "database", source)
    _reject_unknown(db_table, _DATABASE_KEYS, source, "[database]")
    file_url = db_table.get("url", DEFAULT_DATABASE_URL)
    if not isinstance(file_url, str) or not file_url:
        raise ConfigError(f"{source}: [database] url: expected a non-empty string")
    url = database_url or environ.get(DATABASE_URL_ENV) or file_url

    sync_table = _table(data, "sync", source)
    sync = SyncSettings(**_typed_values(sync_table, _SYNC_KEYS, source, "[sync]"))
    if sync.lock_wait_seconds < 0:
        raise ConfigError(f"{source}: [sync] lock_wait_seconds: must not be negative")
    batches = _parse_batches(data, source)
    agents = _parse_agents(data, source)
    if require_batches and not batches and not agents:
        # A run over nothing would succeed every time: a config cut short, unnoticed.
        raise ConfigError(f"{source}: no [[batches]] and no [[agents]]: there is nothing to sync")

    api_key = environ.get(API_KEY_ENV, "").strip()
    if require_api_key and not api_key:
        raise ConfigError(f"environment: {API_KEY_ENV} is not set (the Ultravox API key)")
    return Config(
        api=api,
        database_url=url,
        batches=batches,
        agents=agents,
        sync=sync,
        api_key=api_key,
        source=source,
    )


def _table(data: Mapping[str, Any], name: str, source: str) -> Mapping[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: [{name}]: expected a table")
    return value


def _reject_unknown(table: Mapping[str, Any], known: set[str], source: str, where: str) -> None:
    for key in table:
        if key not in known:
            place = f"{where} " if where else ""
            expected = ", ".join(sorted(known))
            raise ConfigError(f"{source}: {place}unknown key {key!r} (expected one of: {expected})")


def _typed_values(
    table: Mapping[str, Any], kinds: Mapping[str, type], source: str, where: str
) -> dict[str, Any]:
    """The table's values, each checked against its expected type."""
    _reject_unknown(table, set(kinds), source, where)
    values: dict[str, Any] = {}
    for key, value in table.items():
        kind = kinds[key]
        # TOML booleans are ints to Python; an int is a fine float. TOML also has nan and inf,
        # which pass every range check (nan compares false), so they are refused here.
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is float:
            ok = (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
            )
        else:
            ok = isinstance(value, kind) and not isinstance(value, bool)
        if not ok:
            raise ConfigError(f"{source}: {where} {key}: expected {kind.__name__}, got {value!r}")
        values[key] = value
    return values


def _parse_api(table: Mapping[str, Any], source: str) -> ApiSettings:
    settings = ApiSettings(**_typed_values(table, _API_KEYS, source, "[api]"))

    parts = urlsplit(settings.base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{source}: [api] base_url: expected an http(s) URL, got {settings.base_url!r}"
        )
    if parts.query or parts.fragment:
        raise ConfigError(f"{source}: [api] base_url: must not carry a query or fragment")
    for key in ("page_size", "max_attempts", "concurrency"):
        if getattr(settings, key) < 1:
            raise ConfigError(f"{source}: [api] {key}: must be at least 1")
    for key in ("timeout_seconds", "backoff_max_seconds", "max_requests_per_second"):
        if getattr(settings, key) <= 0:
            raise ConfigError(f"{source}: [api] {key}: must be greater than 0")
    for key in ("backoff_initial_seconds", "retry_after_max_seconds", "max_wait_seconds"):
        if getattr(settings, key) < 0:
            raise ConfigError(f"{source}: [api] {key}: must not be negative")
    if settings.key_requests_per_second < settings.max_requests_per_second:
        raise ConfigError(
            f"{source}: [api] key_requests_per_second ({settings.key_requests_per_second:g}) "
            f"is below max_requests_per_second ({settings.max_requests_per_second:g}): "
            "one process alone would exceed the API key's limit"
        )
    return settings


def runs_within_key_limit(api: ApiSettings) -> int:
    """How many processes, each capped at `max_requests_per_second`, fit together under
    `key_requests_per_second`: the slots of the Airflow pool its tasks share (200 / 20 = 10).

    Exact, on the numbers as written in the config: 0.3 / 0.1 is 3, not the 2 that binary
    floats give.
    """
    key_limit = Fraction(repr(api.key_requests_per_second))
    per_run = Fraction(repr(api.max_requests_per_second))
    return key_limit // per_run


def _array_of_tables(
    data: Mapping[str, Any], name: str, known: set[str], source: str
) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Each `[[name]]` entry with its place for messages, unknown keys refused."""
    value = data.get(name, [])
    if not isinstance(value, list):
        raise ConfigError(f"{source}: {name}: expected an array of tables ([[{name}]])")
    for index, entry in enumerate(value, start=1):
        where = f"[[{name}]] #{index}"
        if not isinstance(entry, dict):
            raise ConfigError(f"{source}: {where}: expected a table")
        _reject_unknown(entry, known, source, where)
        yield where, entry


def _parse_batches(data: Mapping[str, Any], source: str) -> tuple[BatchRef, ...]:
    refs: dict[str, BatchRef] = {}
    for where, entry in _array_of_tables(data, "batches", _BATCH_KEYS, source):
        agent_id = _uuid(entry, "agent_id", source, where)
        batch_id = _uuid(entry, "batch_id", source, where)
        if batch_id in refs:
            raise ConfigError(f"{source}: {where}: batch_id {batch_id} is listed twice")
        refs[batch_id] = BatchRef(agent_id, batch_id, _statuses(entry, source, where))
    return tuple(refs.values())


def _parse_agents(data: Mapping[str, Any], source: str) -> tuple[AgentRef, ...]:
    refs: dict[str, AgentRef] = {}
    for where, entry in _array_of_tables(data, "agents", _AGENT_KEYS, source):
        agent_id = _uuid(entry, "agent_id", source, where)
        if agent_id in refs:
            raise ConfigError(f"{source}: {where}: agent_id {agent_id} is listed twice")
        refs[agent_id] = AgentRef(agent_id, _statuses(entry, source, where))
    return tuple(refs.values())


def _statuses(entry: Mapping[str, Any], source: str, where: str) -> tuple[str, ...]:
    value = entry.get("statuses", [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{source}: {where}: statuses: expected an array of strings")
    for status in value:
        if status not in STATUS_FILTER_VALUES:
            allowed = ", ".join(STATUS_FILTER_VALUES)
            raise ConfigError(f"{source}: {where}: statuses: {status!r} is not one of {allowed}")
    return tuple(dict.fromkeys(value))


def _uuid(entry: Mapping[str, Any], key: str, source: str, where: str) -> str:
    if key not in entry:
        raise ConfigError(f"{source}: {where}: missing {key}")
    value = entry[key]
    try:
        if not isinstance(value, str) or not UUID_PATTERN.fullmatch(value):
            raise ValueError
        return str(uuid.UUID(value))
    except ValueError:
        raise ConfigError(f"{source}: {where}: {key} {value!r} is not a UUID") from None
