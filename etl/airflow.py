"""Airflow: a DAG that spreads the batches of one sync over Airflow's workers.

    # dags/ultravox_sync.py (see examples/airflow/ultravox_sync_dag.py)
    from etl.airflow import ultravox_sync_dag

    dag = ultravox_sync_dag("/opt/airflow/config/ultravox-etl.toml")

The DAG (TaskFlow API, Airflow 3):

1. `list_batches` brings the schema to head, then lists the batches to sync: the config's
   `[[batches]]`, then every batch its `[[agents]]` list (a batch gone from its agent's list
   is marked removed, as a CLI run does).
2. `sync_batch` is mapped over that list, one task instance per batch, at most
   `max_parallel_batches` at once (`max_active_tis_per_dag`), each retried by Airflow. Each
   is an `etl.sync()` run of one batch, recorded in etl_runs like any other run; the
   per-batch lock makes retries and overlapping DAG runs safe.

With `pool=` both tasks take one slot each of that Airflow pool, so all the DAG runs, DAGs
and workers sharing one API key stay within its limit together: each task is one process
with its own `[api] max_requests_per_second`, and `ultravox-etl airflow-pool` prints the
`airflow pools set` line sizing the pool from the config (key limit / per-task cap).

Outcomes: a synced (or skipped-as-final, or removed) batch succeeds and returns its counts
as XCom; a failed batch fails the task instance, so Airflow retries it; a batch another run
is syncing ("locked, try later") is skipped, or with `on_locked="reschedule"` rescheduled.
What no retry can fix fails either task at once, retries or not (AirflowFailException): a
refused API key, a config error (an unsupported database URL included).

Secrets never live in the DAG file or the config: the database URL comes from an Airflow
Connection (`ultravox_etl_db`, of a type a backend serves, e.g. postgres or sqlite: see
`etl.load.backends.Backend.url_from_connection`), the API key from an Airflow Variable
(`ultravox_api_key`) or, with `api_key_conn_id`, from a Connection's password.

Only `ultravox_sync_dag` imports Airflow, so the rest of this module works without it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Protocol

from etl.config import (
    API_KEY_ENV,
    ApiSettings,
    BatchRef,
    Config,
    ConfigError,
    load_config,
    runs_within_key_limit,
)
from etl.domain import BatchStatus
from etl.extract.client import ApiError, ApiKeyRefused, UltravoxClient
from etl.load.backends import AirflowConnection, backends
from etl.load.database import open_engine, upgrade_to_head
from etl.report.progress import LogProgress
from etl.report.results import RunResult

if TYPE_CHECKING:
    from airflow.sdk import DAG  # type: ignore[import-not-found, unused-ignore]

# mypy checks this module against Airflow's types where it is installed (CI); without it,
# the imports are unknown and the decorators untyped, which the ignores below allow.

log = logging.getLogger(__name__)

DEFAULT_CONN_ID = "ultravox_etl_db"
DEFAULT_API_KEY_VARIABLE = "ultravox_api_key"
DEFAULT_POOL = "ultravox_api"


class ConnectionLike(AirflowConnection, Protocol):
    """The fields of an Airflow Connection this module reads."""

    def get_uri(self) -> str: ...


def database_url_from_connection(conn: ConnectionLike) -> str:
    """The database URL of an Airflow Connection.

    The backend that serves the Connection's type builds it (etl.load.backends: e.g.
    postgres from host, port, login, password, schema and libpq extras; sqlite from the
    file's path in host). A type no backend serves: the Connection's URI as it is.
    """
    for backend in backends():
        url = backend.url_from_connection(conn)
        if url is not None:
            return url.render_as_string(hide_password=False)
    return conn.get_uri()


FAULTS_RETRIES_CANNOT_FIX = (ApiKeyRefused, ConfigError)
"""A refused API key, a config that cannot be used (an unsupported database URL too): the
task fails at once (AirflowFailException) instead of waiting out its retries. Everything
else (an unreachable API, a database that is down, a failed batch) is retried."""


# -- the work of the two tasks, without Airflow ---------------------------------------------------


def batch_to_xcom(batch: BatchRef) -> dict[str, Any]:
    """A batch as a JSON-able mapping, the unit `sync_batch` is mapped over."""
    return {"agent_id": batch.agent_id, "batch_id": batch.batch_id, "statuses": [*batch.statuses]}


def batch_from_xcom(value: Mapping[str, Any]) -> BatchRef:
    return BatchRef(
        agent_id=str(value["agent_id"]),
        batch_id=str(value["batch_id"]),
        statuses=tuple(value.get("statuses") or ()),
    )


def plan_batches(config: Config, *, migrate: bool = True) -> list[BatchRef]:
    """The batches one DAG run syncs: the same plan as a CLI run (etl.pipeline.targets).

    Brings the schema to head first (`migrate`; one process at a time, under the lock
    "schema"). As in a CLI run, a batch gone from its agent's complete list is marked
    removed. Raises if an agent's list cannot be read, so the task fails and is retried.
    """
    from etl.pipeline.targets import mark_gone_batches_removed, plan_targets

    engine = open_engine(config.database_url)
    try:
        if migrate:
            upgrade_to_head(engine)
        with UltravoxClient(config.api, config.api_key) as client:
            plan = plan_targets(config, engine, client)
        if plan.errors:
            raise ApiError("; ".join(plan.errors))
        mark_gone_batches_removed(engine, plan, datetime.now(UTC))
        return [target.batch for target in plan.targets]
    finally:
        engine.dispose()


class Outcome(StrEnum):
    DONE = "done"
    TRY_LATER = "try_later"
    FAILED = "failed"
    """Worth retrying: the batch failed, the API was unreachable, the run was stopped."""
    FAILED_FOR_GOOD = "failed_for_good"
    """No retry can fix it: the API refused the key."""


@dataclasses.dataclass(frozen=True)
class BatchOutcome:
    outcome: Outcome
    message: str
    summary: dict[str, Any]
    """run_id, batch_id, status, counts, note, error: the task's XCom when it succeeds."""


def batch_outcome(result: RunResult, batch: BatchRef) -> BatchOutcome:
    """What one batch's run means to Airflow: done, try later (locked), failed (retry), or
    failed for good (no retry)."""
    mine = next((b for b in result.batches if b.batch.batch_id == batch.batch_id), None)
    summary: dict[str, Any] = {
        "run_id": result.run_id,
        "batch_id": batch.batch_id,
        "status": mine.status.value if mine else None,
        "counts": mine.counts.as_dict() if mine else None,
        "streams": {s.stream: s.counts.as_dict() for s in mine.streams} if mine else None,
        "note": mine.note if mine else None,
        "error": (mine.error if mine else None) or result.error,
    }
    where = f"batch {batch.batch_id} (run {result.run_id})"
    if result.api_key_refused:
        return BatchOutcome(Outcome.FAILED_FOR_GOOD, f"{where} failed: {result.error}", summary)
    if mine is None or mine.status is BatchStatus.FAILED or result.error is not None:
        return BatchOutcome(Outcome.FAILED, f"{where} failed: {summary['error']}", summary)
    if mine.status is BatchStatus.LOCKED:
        return BatchOutcome(Outcome.TRY_LATER, f"{where} locked: {mine.note}", summary)
    note = f" ({mine.note})" if mine.note else ""
    return BatchOutcome(Outcome.DONE, f"{where} {mine.status.value}{note}", summary)


def sync_one_batch(
    config: Config, batch: BatchRef, *, full: bool = False, progress_interval: float = 30.0
) -> BatchOutcome:
    """One `etl.sync()` run of one batch, without listing any agent again.

    list_batches has migrated the schema; should a retry run a newer version of this
    package, its sync migrates (one task at a time, under the lock "schema").
    """
    from etl.pipeline import sync

    one = dataclasses.replace(config, batches=(batch,), agents=())
    progress = LogProgress(progress_interval)
    result = sync(one, [batch.batch_id], full=full, progress=progress)
    return batch_outcome(result, batch)


def pool_set_command(api: ApiSettings, pool: str, config_source: str) -> str:
    """The `airflow pools set` line that sizes `pool` for tasks syncing with `api`.

    One slot per task, each at most `max_requests_per_second`: together they stay within
    `key_requests_per_second`. The description says how it was sized, for whoever finds
    the pool in Airflow's UI. `airflow pools set` creates or resizes, so the line can run
    again after the config changes.
    """
    slots = runs_within_key_limit(api)
    description = (
        f"Ultravox API: {api.key_requests_per_second:g} requests/s per key, "
        f"{api.max_requests_per_second:g} per task (ultravox-etl airflow-pool "
        f"--config {config_source})"
    )
    return shlex.join(["airflow", "pools", "set", pool, str(slots), description])


# -- the DAG ------------------------------------------------------------------------------------


def load_task_config(
    config_path: str | os.PathLike[str],
    *,
    database_conn_id: str,
    api_key_variable: str | None,
    api_key_conn_id: str | None,
    need_api_key: bool = True,
) -> Config:
    """The config file, with the database URL and the API key from Airflow's secrets.

    Call inside a task: it reads the Connection and the Variable (Airflow masks both in
    task logs).
    """
    from airflow.sdk import Connection, Variable  # type: ignore[import-not-found, unused-ignore]

    database_url = database_url_from_connection(Connection.get(database_conn_id))
    env = dict(os.environ)
    if need_api_key:
        if api_key_conn_id is not None:
            key = Connection.get(api_key_conn_id).password or ""
        elif api_key_variable is not None:
            key = Variable.get(api_key_variable)
        else:
            key = ""
        env[API_KEY_ENV] = str(key)
    return load_config(
        config_path, database_url=database_url, require_api_key=need_api_key, environ=env
    )


def ultravox_sync_dag(
    config_path: str | os.PathLike[str],
    *,
    dag_id: str = "ultravox_sync",
    schedule: Any = "*/10 * * * *",
    start_date: datetime | None = None,
    database_conn_id: str = DEFAULT_CONN_ID,
    api_key_variable: str | None = DEFAULT_API_KEY_VARIABLE,
    api_key_conn_id: str | None = None,
    max_parallel_batches: int = 4,
    retries: int = 3,
    retry_delay: timedelta = timedelta(minutes=2),
    on_locked: Literal["skip", "reschedule"] = "skip",
    reschedule_after: timedelta = timedelta(minutes=5),
    full: bool = False,
    pool: str | None = None,
    execution_timeout: timedelta | None = timedelta(hours=2),
    tags: Sequence[str] = ("ultravox",),
    **dag_kwargs: Any,
) -> DAG:
    """The DAG: `list_batches`, then `sync_batch` mapped over them (see the module doc).

    `config_path`: the TOML config (its `[database] url` is replaced by the Connection's).
    `max_parallel_batches`: sync_batch instances running at once across all DAG runs (with
    `pool`, also no more than the pool's free slots).
    `on_locked`: a batch another run is syncing is skipped (default), or rescheduled
    `reschedule_after` later. `dag_kwargs` go to the DAG (e.g. `max_active_runs`).
    `pool`: the Airflow pool both tasks take one slot of (e.g. DEFAULT_POOL), sized with
    `ultravox-etl airflow-pool`; None: Airflow's default_pool, no limit across workers.
    Create the pool before the DAG runs: Airflow 3.3 never runs a task whose pool does not
    exist and does not fail it either. The task stays `scheduled`, and only the scheduler's
    log says why ("Tasks using non-existent pool ... will not be scheduled"); the DAG
    processor does not check pools, so no DAG warning shows it.
    """
    from airflow.sdk import dag, get_current_context, task  # type: ignore[import-not-found, unused-ignore]

    skip, fail, reschedule = _airflow_exceptions()
    dag_kwargs.setdefault("max_active_runs", 1)
    dag_kwargs.setdefault("catchup", False)

    def task_config(*, need_api_key: bool) -> Config:
        return load_task_config(
            config_path,
            database_conn_id=database_conn_id,
            api_key_variable=api_key_variable,
            api_key_conn_id=api_key_conn_id,
            need_api_key=need_api_key,
        )

    @dag(  # type: ignore[untyped-decorator, unused-ignore]
        dag_id=dag_id,
        schedule=schedule,
        start_date=start_date or datetime(2025, 1, 1, tzinfo=UTC),
        tags=list(tags),
        default_args={
            "retries": retries,
            "retry_delay": retry_delay,
            "execution_timeout": execution_timeout,
        },
        doc_md=__doc__,
        **dag_kwargs,
    )
    def ultravox_sync() -> None:
        # Both tasks request the API (list_batches when [[agents]] are configured), each as
        # one process with its own rate cap: one slot each. A pool of None: default_pool.
        in_pool: dict[str, Any] = {"pool": pool, "pool_slots": 1}

        @task(**in_pool)  # type: ignore[untyped-decorator, unused-ignore]
        def list_batches() -> list[dict[str, Any]]:
            try:
                config = task_config(need_api_key=False)
                if config.agents:  # listing the agents' batches needs the key
                    config = task_config(need_api_key=True)
                planned = plan_batches(config)
            except FAULTS_RETRIES_CANNOT_FIX as exc:
                raise fail(str(exc)) from None
            log.info("%d batches to sync", len(planned))
            return [batch_to_xcom(b) for b in planned]

        @task(  # type: ignore[untyped-decorator, unused-ignore]
            max_active_tis_per_dag=max_parallel_batches,
            map_index_template="{{ ultravox_batch_id }}",
            **in_pool,
        )
        def sync_batch(batch: dict[str, Any]) -> dict[str, Any]:
            ref = batch_from_xcom(batch)
            context: Any = get_current_context()
            context["ultravox_batch_id"] = ref.batch_id  # names the mapped instance in the UI
            try:
                config = task_config(need_api_key=True)
                outcome = sync_one_batch(config, ref, full=full)
            except FAULTS_RETRIES_CANNOT_FIX as exc:
                raise fail(str(exc)) from None
            if outcome.outcome is Outcome.FAILED_FOR_GOOD:
                raise fail(outcome.message)
            if outcome.outcome is Outcome.TRY_LATER:
                if on_locked == "reschedule":
                    raise reschedule(reschedule_date=datetime.now(UTC) + reschedule_after)
                raise skip(outcome.message)
            if outcome.outcome is Outcome.FAILED:
                raise RuntimeError(outcome.message)  # fails the instance; Airflow retries
            log.info("%s", outcome.message)
            return outcome.summary

        sync_batch.expand(batch=list_batches())

    built: DAG = ultravox_sync()
    return built


def _airflow_exceptions() -> tuple[type[Exception], type[Exception], Callable[..., Exception]]:
    """AirflowSkipException, AirflowFailException, AirflowRescheduleException.

    They moved to airflow.sdk.exceptions in Airflow 3.1; airflow.exceptions has them in 3.0.
    """
    import importlib

    names = ("AirflowSkipException", "AirflowFailException", "AirflowRescheduleException")
    try:
        module = importlib.import_module("airflow.sdk.exceptions")
        found = tuple(getattr(module, name) for name in names)
    except (ImportError, AttributeError):
        module = importlib.import_module("airflow.exceptions")
        found = tuple(getattr(module, name) for name in names)
    skip, fail, reschedule = found
    return skip, fail, reschedule
