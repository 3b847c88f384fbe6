"""Airflow: the example DAG on real Airflow, and the parts of etl.airflow that need no Airflow.

The end-to-end test runs the `airflow` command of this virtualenv in subprocesses: `airflow
db migrate` on a temporary SQLite metadata database, then `airflow dags test`, with the
database Connection and the API key Variable given as AIRFLOW_CONN_… / AIRFLOW_VAR_…, the
fake API served by this process, and a fresh PostgreSQL database whose rows it checks.
`airflow dags test` runs the tasks one at a time and never looks at pools (DAG.test in
airflow/sdk/definitions/dag.py): the pool is checked as created from `ultravox-etl
airflow-pool`'s line, with the config's slots, and taken by every task; that the scheduler
then runs no more tasks than the pool's slots at once is Airflow's part.
It needs the `airflow` extra (`pip install -e '.[test,airflow]'`, as CI does); without it
the test is skipped, except under CI (CI=true), where it fails.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, make_url, select

from etl.airflow import (
    DEFAULT_POOL,
    Outcome,
    batch_from_xcom,
    batch_outcome,
    batch_to_xcom,
    database_url_from_connection,
    plan_batches,
)
from etl.config import BatchRef, load_config
from etl.domain import BatchStatus, RunStatus, StreamCounts
from etl.fake_api import FakeUltravox
from etl.load.backends import backends
from etl.load.database import locks_for
from etl.load.schema import etl_batch_runs, scheduled_batches
from etl.report.results import BatchResult, RunResult, StreamResult
from tests.conftest import AGENT_ID, TEST_API_KEY, rows, run_console_script, write_config
from tests.test_sync_e2e import add_generated_batch, api_view, db_view

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_DAG = REPO / "examples" / "airflow" / "ultravox_sync_dag.py"
AIRFLOW = Path(sys.executable).with_name("airflow")

REFUSED = "GET /api/…: the Ultravox API refused the API key (HTTP 401)"

RESCHEDULING_DAG = """\
import os
from datetime import timedelta

from etl.airflow import ultravox_sync_dag

dag = ultravox_sync_dag(
    os.environ["ULTRAVOX_ETL_CONFIG"],
    dag_id="ultravox_sync_rescheduling",
    on_locked="reschedule",
    reschedule_after=timedelta(seconds=2),
)
"""


QUICK_RETRY_DAG = """\
import os
from datetime import timedelta

from etl.airflow import ultravox_sync_dag

dag = ultravox_sync_dag(
    os.environ["ULTRAVOX_ETL_CONFIG"],
    dag_id="ultravox_sync_quick_retry",
    retries=1,
    retry_delay=timedelta(seconds=1),
)
"""


# -- without Airflow -----------------------------------------------------------------------------


@dataclass
class StubConnection:
    conn_type: str | None
    host: str | None = None
    schema: str | None = None
    login: str | None = None
    password: str | None = None
    port: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def extra_dejson(self) -> dict[str, Any]:
        return self.extra

    def get_uri(self) -> str:
        return f"{self.conn_type}://{self.host}/{self.schema}"


def test_the_database_url_is_built_from_an_airflow_connection() -> None:
    pg = StubConnection(
        "postgres",
        host="db.internal",
        schema="reporting",
        login="etl",
        password="p@ss:w/rd",
        port=5433,
        extra={"sslmode": "require", "cursor": "dictcursor"},
    )
    url = make_url(database_url_from_connection(pg))
    assert url.drivername == "postgresql"  # the backend picks the driver when it connects
    assert (url.host, url.port, url.database, url.username) == (
        "db.internal",
        5433,
        "reporting",
        "etl",
    )
    assert url.password == "p@ss:w/rd"  # escaped in the URL, intact once parsed
    assert dict(url.query) == {"sslmode": "require"}  # Airflow's own extras are not libpq's

    assert database_url_from_connection(StubConnection("sqlite", host="/data/etl.db")) == (
        "sqlite:////data/etl.db"
    )
    maria = StubConnection(
        "mysql", "db.internal", "reporting", login="etl", password="p@ss", port=3307
    )
    url = make_url(database_url_from_connection(maria))
    assert (url.drivername, url.host, url.port, url.database) == (
        "mysql",
        "db.internal",
        3307,
        "reporting",
    )
    assert (url.username, url.password, dict(url.query)) == ("etl", "p@ss", {})
    # A type no backend serves: the Connection's URI as it is.
    assert database_url_from_connection(StubConnection("oracle", "h", "d")) == "oracle://h/d"


def test_each_backend_builds_the_url_of_the_connection_types_it_serves() -> None:
    served = {
        backend.name: backend.airflow_connection_types
        for backend in backends()
        if backend.airflow_connection_types
    }
    assert served["postgresql"] == ("postgres", "postgresql")
    assert served["sqlite"] == ("sqlite",)
    assert served["mysql"] == ("mysql", "mariadb")
    for backend in backends():
        for conn_type in backend.airflow_connection_types:
            conn = StubConnection(conn_type.upper(), host="h", schema="d")  # any case
            url = backend.url_from_connection(conn)
            assert url is not None and backend.accepts(url), (backend.name, conn_type)
            others = [b for b in backends() if b is not backend]
            assert all(b.url_from_connection(conn) is None for b in others)


def test_a_batch_goes_through_xcom_as_plain_json() -> None:
    ref = BatchRef(AGENT_ID, "0b7e4d52-1c9a-4f3e-8a6d-5e2f1c0b9a31", ("ERROR", "SUCCESS"))
    value = batch_to_xcom(ref)
    assert value == {
        "agent_id": AGENT_ID,
        "batch_id": ref.batch_id,
        "statuses": ["ERROR", "SUCCESS"],
    }
    assert batch_from_xcom(value) == ref


def test_airflow_pool_prints_the_pools_set_line_sized_from_the_config(tmp_path: Path) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    config = write_config(
        workdir / "etl.toml",
        "https://api.ultravox.ai",
        [],
        max_requests_per_second=30.0,
        key_requests_per_second=200.0,
    )

    sized = run_console_script("airflow-pool", "--config", str(config), cwd=workdir)
    named = run_console_script(
        "airflow-pool", "--config", "etl.toml", "--name", "uvx key 2", cwd=workdir
    )

    # No API key in the environment (run_console_script drops ULTRAVOX_*), no database.
    assert (sized.exit_code, sized.stderr, named.exit_code, named.stderr) == (0, "", 0, "")
    description = "Ultravox API: 200 requests/s per key, 30 per task (ultravox-etl airflow-pool"
    assert sized.stdout == (
        f"airflow pools set {DEFAULT_POOL} 6 '{description} --config {config})'\n"
    )
    assert shlex.split(named.stdout) == [
        "airflow", "pools", "set", "uvx key 2", "6", f"{description} --config etl.toml)",
    ]  # fmt: skip
    assert sorted(workdir.iterdir()) == [config]


@pytest.mark.parametrize(
    ("status", "run_error", "expected"),
    [
        (BatchStatus.SUCCEEDED, None, Outcome.DONE),
        (BatchStatus.SKIPPED, None, Outcome.DONE),
        (BatchStatus.REMOVED, None, Outcome.DONE),
        (BatchStatus.LOCKED, None, Outcome.TRY_LATER),
        (BatchStatus.FAILED, None, Outcome.FAILED),
        (BatchStatus.SUCCEEDED, "the database did not take the run's records", Outcome.FAILED),
        (BatchStatus.FAILED, "api.ultravox.ai:443 unreachable: connection refused", Outcome.FAILED),
        (BatchStatus.FAILED, REFUSED, Outcome.FAILED_FOR_GOOD),
        (None, REFUSED, Outcome.FAILED_FOR_GOOD),  # refused before this batch started
        (None, "interrupted by SIGTERM", Outcome.FAILED),
    ],
)
def test_a_batch_outcome_maps_to_done_try_later_failed_or_failed_for_good(
    status: BatchStatus | None, run_error: str | None, expected: Outcome
) -> None:
    from datetime import UTC, datetime

    ref = BatchRef(AGENT_ID, "0b7e4d52-1c9a-4f3e-8a6d-5e2f1c0b9a31")
    result = RunResult(run_id=7, started_at=datetime.now(UTC), status=RunStatus.SUCCEEDED)
    result.error = run_error
    result.api_key_refused = run_error == REFUSED
    if status is not None:
        note = "another run is syncing it" if status is BatchStatus.LOCKED else None
        result.batches.append(
            BatchResult(
                ref,
                status,
                [StreamResult("scheduled_calls", StreamCounts(pages=2, fetched=15))],
                note=note,
            )
        )

    outcome = batch_outcome(result, ref)

    assert outcome.outcome is expected
    assert outcome.summary["run_id"] == 7
    assert outcome.summary["batch_id"] == ref.batch_id
    assert ref.batch_id in outcome.message
    if status is not None:
        assert outcome.summary["counts"]["fetched"] == 15


def test_list_batches_plans_configured_then_discovered_batches_and_marks_gone_ones_removed(
    fake_api: FakeUltravox, engine: Engine, database_url: str, tmp_path: Path
) -> None:
    configured = add_generated_batch(fake_api, 3, seed=1)
    listed = [add_generated_batch(fake_api, 2, seed=n) for n in (2, 3)]
    path = write_config(
        tmp_path / "etl.toml",
        fake_api.base_url,
        [(configured.agent_id, configured.batch_id)],
        database_url=database_url,
    )
    with path.open("a") as f:
        f.write(f'\n[[agents]]\nagent_id = "{AGENT_ID}"\nstatuses = ["ERROR"]\n')
    config = load_config(path, environ={"ULTRAVOX_API_KEY": TEST_API_KEY})

    planned = plan_batches(config)

    assert [b.batch_id for b in planned] == [configured.batch_id] + [b.batch_id for b in listed]
    assert planned[0].statuses == ()  # a configured batch keeps its own settings
    assert all(b.statuses == ("ERROR",) for b in planned[1:])

    # A batch that was synced before and is no longer listed for its agent is marked removed.
    from etl.pipeline import sync

    sync(config, [listed[0].batch_id])
    fake_api.remove_batch(listed[0].batch_id)
    assert [b.batch_id for b in plan_batches(config)] == [configured.batch_id, listed[1].batch_id]
    b = scheduled_batches.c
    with engine.connect() as conn:
        removed = conn.execute(select(b.removed_at).where(b.batch_id == listed[0].batch_id))
        assert removed.scalar_one() is not None


# -- on real Airflow -----------------------------------------------------------------------------


@pytest.fixture
def airflow_cli() -> Path:
    if importlib.util.find_spec("airflow") is None or not AIRFLOW.exists():
        message = "apache-airflow is not installed: pip install -e '.[test,airflow]'"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI must run the Airflow test)")
        pytest.skip(message)
    return AIRFLOW


@dataclass
class AirflowHome:
    path: Path
    env: dict[str, str]

    def run(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [str(AIRFLOW), *args],
            env=self.env,
            cwd=self.path,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert proc.returncode == 0 or not check, (
            f"airflow {' '.join(args)}:\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
        )
        return proc

    def latest_run(self, dag_id: str, *columns: str) -> dict[tuple[str, int], tuple[Any, ...]]:
        """(task_id, map_index) -> the task instance's `columns`, in the DAG's latest run."""
        with sqlite3.connect(self.path / "airflow.db") as db:
            (run_id,) = db.execute(
                "SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id DESC LIMIT 1", (dag_id,)
            ).fetchone()
            found = db.execute(
                f"SELECT task_id, map_index, {', '.join(columns)} FROM task_instance "
                "WHERE dag_id = ? AND run_id = ?",
                (dag_id, run_id),
            ).fetchall()
        return {(task_id, index): tuple(values) for task_id, index, *values in found}

    def task_instances(self, dag_id: str) -> dict[tuple[str, int], tuple[Any, ...]]:
        """(task_id, map_index) -> (state, rendered_map_index, max_tries) of the latest run."""
        return self.latest_run(dag_id, "state", "rendered_map_index", "max_tries")

    def tries(self, dag_id: str) -> dict[tuple[str, int], tuple[Any, ...]]:
        """(task_id, map_index) -> (state, try_number) of the latest run."""
        return self.latest_run(dag_id, "state", "try_number")

    def pools(self, dag_id: str) -> dict[tuple[str, int], tuple[Any, ...]]:
        """(task_id, map_index) -> (pool, pool_slots) of the latest run."""
        return self.latest_run(dag_id, "pool", "pool_slots")

    def pool_slots(self) -> dict[str, int]:
        """Airflow's pools and their sizes."""
        with sqlite3.connect(self.path / "airflow.db") as db:
            return dict(db.execute("SELECT pool, slots FROM slot_pool").fetchall())

    def reschedules(self, dag_id: str) -> int:
        with sqlite3.connect(self.path / "airflow.db") as db:
            (count,) = db.execute(
                "SELECT count(*) FROM task_reschedule r JOIN task_instance t ON t.id = r.ti_id "
                "WHERE t.dag_id = ?",
                (dag_id,),
            ).fetchone()
        return int(count)


@pytest.fixture
def airflow_home(airflow_cli: Path, tmp_path: Path, database_url: str) -> AirflowHome:
    home = tmp_path / "airflow"
    dags = home / "dags"
    dags.mkdir(parents=True)
    shutil.copy(EXAMPLE_DAG, dags / EXAMPLE_DAG.name)
    (dags / "ultravox_sync_rescheduling.py").write_text(RESCHEDULING_DAG)
    (dags / "ultravox_sync_quick_retry.py").write_text(QUICK_RETRY_DAG)
    url = make_url(database_url)
    plain_url = url.set(drivername=url.get_backend_name())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "ULTRAVOX"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            # The secrets, as a deployment would give them: never in the DAG file.
            "AIRFLOW_CONN_ULTRAVOX_ETL_DB": plain_url.render_as_string(hide_password=False),
            "AIRFLOW_VAR_ULTRAVOX_API_KEY": TEST_API_KEY,
            "ULTRAVOX_ETL_CONFIG": str(tmp_path / "etl.toml"),
        }
    )
    airflow = AirflowHome(home, env)
    airflow.run("db", "migrate")
    return airflow


def _release_once_recorded_locked(
    engine: Engine, batch_id: str, lock: Any, done: threading.Event, timeout: float = 120
) -> None:
    """Hold `lock` until a run has recorded the batch as locked, then release it."""
    b = etl_batch_runs.c
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not done.is_set():
            with engine.connect() as conn:
                found = conn.execute(
                    select(b.run_id).where((b.batch_id == batch_id) & (b.status == "locked"))
                ).all()
            if len(found) >= 2:  # the first is from the skipping DAG run
                return
            time.sleep(0.2)
    finally:
        lock.release()


@pytest.mark.parametrize("database_url", ["postgresql", "mysql"], indirect=True)
def test_the_dag_syncs_one_mapped_task_per_batch_on_real_airflow(
    airflow_home: AirflowHome,
    fake_api: FakeUltravox,
    engine: Engine,
    database_url: str,
    tmp_path: Path,
) -> None:
    batches = [add_generated_batch(fake_api, n, seed=n) for n in (35, 12, 0)]
    config = write_config(
        tmp_path / "etl.toml",
        fake_api.base_url,
        [(b.agent_id, b.batch_id) for b in batches],
        database_url="sqlite:///not-used-the-connection-wins.db",
        sync={"lock_wait_seconds": 0.5, "created_calls": True},
        max_requests_per_second=100.0,
        key_requests_per_second=300.0,
    )
    locked = batches[1]
    locks = locks_for(engine)

    # The example DAG's pool, created as the README says: with the line `airflow-pool` prints.
    pool_set = run_console_script("airflow-pool", "--config", str(config))
    assert pool_set.exit_code == 0, pool_set.stderr
    airflow_home.run(*shlex.split(pool_set.stdout)[1:])
    assert airflow_home.pool_slots()["ultravox_api"] == 3  # 300/s a key, 100/s a task

    # 1. Another run holds one batch: its task instance is skipped, not failed; the rest load.
    lock = locks.try_acquire(f"batch:{locked.batch_id}")
    assert lock is not None
    try:
        first = airflow_home.run("dags", "test", "ultravox_sync", "2025-01-02T00:00:00+00:00")
    finally:
        lock.release()

    tis = airflow_home.task_instances("ultravox_sync")
    assert tis == {
        ("list_batches", -1): ("success", None, 3),
        ("sync_batch", 0): ("success", batches[0].batch_id, 3),
        ("sync_batch", 1): ("skipped", locked.batch_id, 3),
        ("sync_batch", 2): ("success", batches[2].batch_id, 3),
    }
    for batch in (batches[0], batches[2]):
        assert db_view(engine, batch.batch_id) == api_view(fake_api, batch.batch_id)
    assert rows(
        engine, "SELECT count(*) FROM scheduled_calls WHERE batch_id = :b", b=locked.batch_id
    ) == [(0,)]
    recorded = rows(engine, "SELECT batch_id, status FROM etl_batch_runs ORDER BY run_id")
    assert sorted(recorded) == sorted(
        [
            (batches[0].batch_id, "succeeded"),
            (locked.batch_id, "locked"),
            (batches[2].batch_id, "succeeded"),
        ]
    )
    assert not [r for r in recorded if r[1] == "failed"]
    # Each task takes one slot of the pool (`dags test` runs them one at a time, whatever
    # the pool: DAG.test in airflow/sdk/definitions/dag.py never looks at pools).
    assert set(airflow_home.pools("ultravox_sync").values()) == {("ultravox_api", 1)}

    # 2. Rescheduling instead: the lock is let go once the run has found it taken; the task
    #    instance is rescheduled and then syncs the batch.
    lock = locks.try_acquire(f"batch:{locked.batch_id}")
    assert lock is not None
    done = threading.Event()
    releaser = threading.Thread(
        target=_release_once_recorded_locked, args=(engine, locked.batch_id, lock, done)
    )
    releaser.start()
    try:
        second = airflow_home.run(
            "dags", "test", "ultravox_sync_rescheduling", "2025-01-02T00:00:00+00:00"
        )
    finally:
        done.set()
        releaser.join()

    tis = airflow_home.task_instances("ultravox_sync_rescheduling")
    assert {key: state for key, (state, _, _) in tis.items()} == {
        ("list_batches", -1): "success",
        ("sync_batch", 0): "success",
        ("sync_batch", 1): "success",
        ("sync_batch", 2): "success",
    }
    assert airflow_home.reschedules("ultravox_sync_rescheduling") >= 1
    # A DAG built without `pool=` keeps Airflow's default pool.
    assert set(airflow_home.pools("ultravox_sync_rescheduling").values()) == {("default_pool", 1)}
    for batch in batches:
        assert db_view(engine, batch.batch_id) == api_view(fake_api, batch.batch_id)
    statuses = [
        s
        for (s,) in rows(
            engine,
            "SELECT status FROM etl_batch_runs WHERE batch_id = :b ORDER BY run_id",
            b=locked.batch_id,
        )
    ]
    assert statuses[-1] == "succeeded" and statuses.count("locked") >= 2

    for proc in (first, second):
        assert TEST_API_KEY not in proc.stdout + proc.stderr


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_refused_key_fails_either_task_at_once_and_an_unreachable_api_is_retried(
    airflow_home: AirflowHome,
    fake_api: FakeUltravox,
    engine: Engine,
    database_url: str,
    tmp_path: Path,
) -> None:
    batches = [add_generated_batch(fake_api, 5, seed=n) for n in range(2)]
    config = write_config(
        tmp_path / "etl.toml",
        fake_api.base_url,
        [(b.agent_id, b.batch_id) for b in batches],
        database_url="sqlite:///not-used-the-connection-wins.db",
    )
    wrong_key = "wrong-key-3e9a1c7b-keep-it-secret"
    airflow_home.env["AIRFLOW_VAR_ULTRAVOX_API_KEY"] = wrong_key
    # The example DAG: 3 retries, 2 minutes apart. Failing fast takes none of them.
    retry_delay = 120.0

    # 1. Only [[batches]]: list_batches needs no key; each sync_batch meets the refusal.
    started = time.monotonic()
    first = airflow_home.run(
        "dags", "test", "ultravox_sync", "2025-01-03T00:00:00+00:00", check=False
    )
    assert time.monotonic() - started < retry_delay
    assert airflow_home.tries("ultravox_sync") == {
        ("list_batches", -1): ("success", 1),
        ("sync_batch", 0): ("failed", 1),
        ("sync_batch", 1): ("failed", 1),
    }
    assert "refused the API key" in first.stdout + first.stderr

    # 2. With [[agents]], list_batches lists them with the key: it fails at once.
    with config.open("a") as f:
        f.write(f'\n[[agents]]\nagent_id = "{AGENT_ID}"\n')
    started = time.monotonic()
    second = airflow_home.run(
        "dags", "test", "ultravox_sync", "2025-01-04T00:00:00+00:00", check=False
    )
    assert time.monotonic() - started < retry_delay
    tries = airflow_home.tries("ultravox_sync")
    assert tries[("list_batches", -1)] == ("failed", 1)
    assert tries[("sync_batch", -1)][0] == "upstream_failed"

    # 3. An unreachable API may come back: the instance is retried (1 retry, 1 s apart).
    airflow_home.env["AIRFLOW_VAR_ULTRAVOX_API_KEY"] = TEST_API_KEY
    write_config(
        config,
        "http://127.0.0.1:9",
        [(b.agent_id, b.batch_id) for b in batches[:1]],
        max_attempts=1,
    )
    airflow_home.run(
        "dags", "test", "ultravox_sync_quick_retry", "2025-01-03T00:00:00+00:00", check=False
    )
    assert airflow_home.tries("ultravox_sync_quick_retry") == {
        ("list_batches", -1): ("success", 1),
        ("sync_batch", 0): ("failed", 2),
    }

    for proc in (first, second):
        assert wrong_key not in proc.stdout + proc.stderr
    assert rows(engine, "SELECT count(*) FROM scheduled_calls") == [(0,)]
