"""The sync benchmark: how far the database side is from the cost of fetching alone.

Run from the repository root, in the project's virtualenv (PostgreSQL must be reachable):

    python -m bench.run                     # 200,000 calls in 10 batches, pages of 1,000
    python -m bench.run --smoke             # 5,000 calls, for CI: checks it runs, not speed
    python bench/run.py --calls 1000000     # the same, as a script

Options: --calls N --batches B --page-size P --latency-ms L --concurrency C
--postgres-url URL (an existing database to connect to; scratch databases are created next to
it and dropped) --out FILE (default bench/results/latest.md) --smoke --profile DIR (each
scenario sampled by py-spy if it is on PATH, all threads, collapsed stacks in <DIR>/<scenario>.txt
that `python -m bench.profile_summary FILE` sums up; else cProfile of the main thread only).

The fake API (bench/fake_server.py, the project's etl.fake_api) runs in a process of its own.
Every scenario runs in a fresh Python process, so its peak RSS is its own:

    A   fetch only: the project's HTTP client walks every page and parses it; no database
    B   full sync into a fresh PostgreSQL database
    P   optional peer, right after B: dlt's rest_api source into a fresh PostgreSQL database
        (--dlt / --no-dlt; default: when its virtualenv exists; bench/dlt_peer_runner.py)
    C   full sync into a fresh SQLite database
    M   full sync into a fresh MariaDB/MySQL database (--mysql-url)
    D   re-sync into B's database, nothing changed
    A2, B2, D2   A, B and D with the created-calls stream too (both listings of each batch)
    E   re-sync into B's database after 30% of the calls moved one status further
    E2  the same into B2's database, both streams
    A'  A again, every request delayed by --latency-ms (the fake's latency knob)
    F   B again (a fresh database), every request delayed by --latency-ms

--rounds N runs the whole sequence N times (a fresh fake API each round, the same data) and
reports each scenario's median wall time and median ratio, and its highest peak RSS.

B-F call the project's entry point, etl.pipeline.sync (full=True, so every batch is listed),
with `[api] concurrency` = --concurrency and the client's rate cap at 1,000 requests/s; A and
A' walk the batches on --concurrency threads. The schema is migrated before the clock starts.
Wall seconds, calls/s, peak RSS and the ratio to A (F: to A') go to a markdown table, printed
and written to --out with the machine it ran on. Exit status 1 if a scenario failed or its
counts are not the expected ones (every call inserted, unchanged, or updated; after a change,
no more updated than changed).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import json
import os
import platform
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

if __package__ in (None, ""):  # `python bench/run.py`: make `bench` and `etl` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import dlt_peer_runner as peer

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "latest.md"
DEFAULT_POSTGRES_URL = "postgresql://root@127.0.0.1:5432/postgres"
DEFAULT_MYSQL_URL = "mysql://root@127.0.0.1:3306/test"
RATE_CAP = 1000.0

# scenario -> (what, the ratio's limit, the row it is compared with)
TARGETS: dict[str, tuple[str, float | None, str]] = {
    "A": ("fetch only (HTTP + JSON parse), no database", None, "A"),
    "B": ("full sync → fresh PostgreSQL", 3.0, "A"),
    peer.NAME: (peer.WHAT, None, "A"),  # optional, compared and never judged
    "C": ("full sync → fresh SQLite", 4.0, "A"),
    "M": ("full sync → fresh MariaDB", None, "A"),
    "D": ("re-sync → PostgreSQL, nothing changed", 1.3, "A"),
    "A2": ("A, both streams (scheduled and created calls)", None, "A2"),
    "B2": ("B, both streams", 3.0, "A2"),
    "D2": ("D, both streams", 1.3, "A2"),
    "E": ("re-sync → PostgreSQL, 30% changed status", 2.0, "A"),
    "E2": ("E, both streams (B2's database)", 2.0, "A2"),
    "A'": ("A with latency", None, "A'"),
    "F": ("B with latency", 1.2, "A'"),
}
MIN_TIMES_FASTER_THAN_PEER = 3.0
MIN_CALLS_PER_SECOND_B = 30_000
COUNTED = ("fetched", "inserted", "updated", "unchanged", "removed", "rejected")
MAX_RSS_MIB = 150


# -- one scenario, in its own process ----------------------------------------------------------


DATABASE_SERVERS = ("postgres", "mariadbd", "mysqld")


def database_server_cpu() -> float | None:
    """CPU seconds the local database servers' processes have used so far, those that ended
    included (a server's main process counts its reaped children's), or None without /proc.
    The difference across a scenario is what the database did for it (the other server idles);
    a remote server's work is not seen."""
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total, found = 0, False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            text = stat.read_text()
            name, fields = text[text.index("(") + 1 : text.rindex(")")], text.rsplit(")", 1)[1]
            if name in DATABASE_SERVERS:
                found = True
                total += sum(int(v) for v in fields.split()[11:15])  # utime stime cutime cstime
    return total / ticks if found else None


def settled_database_server_cpu() -> float | None:
    """database_server_cpu() once it stops moving. A backend's CPU moves to its server's
    main process only when that process has reaped it, a moment after the client hung up:
    read too soon, a whole scenario's backends can be missing (seen: 12 s of 18)."""
    reading = database_server_cpu()
    for _ in range(30):
        time.sleep(0.1)
        again = database_server_cpu()
        if reading is None or again is None or again - reading < 0.02:
            return again
        reading = again
    return reading


class CpuClock:
    """Wall time, this process's CPU and the local database servers' CPU across a block:
    `spent` = {"wall", "cpu_s", "database_cpu_at_start", "database_cpu_s"} (the database
    figures absent if not seen). Around a child process, the database's end is read once
    that child's connections are gone. Inside a scenario's own process (`inside_scenario`),
    its connections are still open: only the start is read, and `in_child` reads the end
    after the process has exited."""

    def __init__(self, *, inside_scenario: bool = False) -> None:
        self.inside_scenario = inside_scenario

    def __enter__(self) -> CpuClock:
        self._server = database_server_cpu()
        self._own = _own_cpu()
        self._start = time.perf_counter()
        self.spent: dict[str, float] = {}
        return self

    def __exit__(self, *exc: object) -> None:
        self.spent["wall"] = time.perf_counter() - self._start
        self.spent["cpu_s"] = _own_cpu() - self._own
        if self._server is None:
            return
        self.spent["database_cpu_at_start"] = self._server
        server = None if self.inside_scenario else settled_database_server_cpu()
        if server is not None:
            self.spent["database_cpu_s"] = server - self._server


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _settings(spec: dict[str, Any]) -> Any:
    from etl.config import ApiSettings

    return ApiSettings(
        base_url=spec["base_url"],
        page_size=spec["page_size"],
        max_requests_per_second=spec.get("rate_cap", RATE_CAP),
        concurrency=spec["concurrency"],
        timeout_seconds=60.0,
    )


def _fetch_only(spec: dict[str, Any]) -> dict[str, Any]:
    from etl.config import BatchRef
    from etl.extract.client import UltravoxClient
    from etl.extract.endpoints import batch_listing_pages
    from etl.streams import page_size_of
    from etl.streams.created_calls import CREATED_CALLS
    from etl.streams.scheduled_calls import SCHEDULED_CALLS

    settings = _settings(spec)
    # Each stream's listing as the sync asks for it: its path, its page size.
    streams = [s for s in (SCHEDULED_CALLS, CREATED_CALLS) if s.name in spec["streams"]]

    def walk(client: UltravoxClient, batch_id: str) -> int:
        ref = BatchRef(spec["agent_id"], batch_id)
        return sum(
            len(p.results)
            for stream in streams
            for p in batch_listing_pages(
                client,
                ref,
                stream.path,
                {},
                page_size=page_size_of(stream, settings.page_size),
                where=batch_id,
            )
        )

    with (
        UltravoxClient(settings, spec["api_key"]) as client,
        CpuClock(inside_scenario=True) as cpu,
        ThreadPoolExecutor(settings.concurrency) as pool,
    ):
        fetched = sum(pool.map(lambda b: walk(client, b), spec["batches"]))
    return {**cpu.spent, "fetched": fetched}


def _sync(spec: dict[str, Any]) -> dict[str, Any]:
    from etl.config import BatchRef, Config, SyncSettings
    from etl.load.database import open_engine, upgrade_to_head

    config = Config(
        api=_settings(spec),
        database_url=spec["database_url"],
        batches=tuple(BatchRef(spec["agent_id"], b) for b in spec["batches"]),
        api_key=spec["api_key"],
        source="bench",
        sync=SyncSettings(created_calls="calls" in spec["streams"]),
    )
    engine = open_engine(config.database_url)
    upgrade_to_head(engine)
    engine.dispose()
    from etl.pipeline import sync

    with CpuClock(inside_scenario=True) as cpu:
        result = sync(config, full=True)
    totals: dict[str, Any] = dict(cpu.spent)
    for name in (*COUNTED, "pages"):
        totals[name] = sum(getattr(b.counts, name) for b in result.batches)
    for stream in spec["streams"]:
        totals[stream] = {
            name: sum(getattr(s.counts, name) for b in result.batches for s in b.streams
                      if s.stream == stream)
            for name in COUNTED
        }  # fmt: skip
    totals["failed"] = [f"{b.batch.batch_id}: {b.error}" for b in result.batches if b.error]
    return totals


def run_scenario(spec: dict[str, Any]) -> dict[str, Any]:
    action = _fetch_only if spec["kind"] == "fetch" else _sync
    if spec.get("gc_threshold"):  # an experiment: see --gc-threshold
        gc.freeze()
        gc.set_threshold(*spec["gc_threshold"])
    if spec.get("profile") and not spec.get("py_spy"):
        profiler = cProfile.Profile()
        result = profiler.runcall(action, spec)
        profiler.dump_stats(spec["profile"])
    else:
        result = action(spec)
    result["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


# -- the orchestration ---------------------------------------------------------------------------


Check = tuple[str, Callable[[dict[str, Any]], bool]]
"""What a scenario's result must satisfy: (what it says, whether the result does)."""


def counts(**expected: int) -> list[Check]:
    """Checks that each count is exactly the expected value."""
    return [
        (f"{name} = {value:,}", lambda r, name=name, value=value: r.get(name) == value)
        for name, value in expected.items()
    ]


@dataclass
class Row:
    name: str
    calls: int
    result: dict[str, Any]
    checks: list[Check] = field(default_factory=list)

    @property
    def wall(self) -> float:
        return float(self.result["wall"])

    def problems(self) -> list[str]:
        found = [f"{self.name}: {failure}" for failure in self.result.get("failed", [])]
        shown = {k: v for k, v in self.result.items() if k in COUNTED}
        found += [
            f"{self.name}: expected {what}; counts {shown}"
            for what, holds in self.checks
            if not holds(self.result)
        ]
        return found


class FakeServer:
    """bench/fake_server.py in a child process."""

    def __init__(self, batches: int, calls_per_batch: int) -> None:
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "bench.fake_server", "--batches", str(batches),
             "--calls", str(calls_per_batch)],
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit("the fake API did not start")
        self.hello: dict[str, Any] = json.loads(line)

    def command(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline().strip()
        if not answer.startswith("ok"):
            raise SystemExit(f"fake API: {line!r}: {answer!r}")
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, SystemExit):
                self.command("quit")
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class ScratchDatabases:
    """Scratch databases on the server of `url` (PostgreSQL or MariaDB/MySQL), dropped at
    the end. Statements: (the server's version, create a database, drop it)."""

    _STATEMENTS: ClassVar[dict[str, tuple[str, str, str]]] = {  # backend -> statements
        "postgresql": (
            "SHOW server_version",
            'CREATE DATABASE "{name}"',
            'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
        ),
        "mysql": (
            "SELECT VERSION()",
            "CREATE DATABASE `{name}` CHARACTER SET utf8mb4",
            "DROP DATABASE IF EXISTS `{name}`",
        ),
    }

    def __init__(self, url: str) -> None:
        from sqlalchemy import text
        from sqlalchemy.engine import make_url

        from etl.load.database import backend_for, open_engine

        self._text = text
        self.url = make_url(url)
        engine = open_engine(url)
        version, self._create, self._drop = self._STATEMENTS[backend_for(engine).name]
        self.admin = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.created: list[str] = []
        with self.admin.connect() as conn:
            self.version = str(conn.execute(text(version)).scalar())

    def fresh(self) -> str:
        name = f"etl_bench_{uuid.uuid4().hex[:10]}"
        with self.admin.connect() as conn:
            conn.execute(self._text(self._create.format(name=name)))
        self.created.append(name)
        return self.url.set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with self.admin.connect() as conn:
            for name in self.created:
                conn.execute(self._text(self._drop.format(name=name)))
        self.admin.engine.dispose()


def in_child(spec: dict[str, Any]) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.run", "--scenario", json.dumps(spec)]
    py_spy = spec.get("py_spy")
    if py_spy:  # sampled, every thread: collapsed stacks, see bench/profile_summary.py
        command = [py_spy, "record", "--format", "raw", "--rate", "250",
                   "--output", spec["profile"], "--", *command]  # fmt: skip
    proc = subprocess.run(  # noqa: S603 - our own interpreter and module, or py-spy
        command, cwd=ROOT, capture_output=True, text=True, check=False,
    )  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"scenario {spec['name']} failed (exit {proc.returncode})")
    result = dict(json.loads(lines[-1]))
    # The scenario's connections closed with its process: only now is their work all counted.
    start, end = result.pop("database_cpu_at_start", None), settled_database_server_cpu()
    if start is not None and end is not None:
        result["database_cpu_s"] = end - start
    return result


def _machine(postgres_version: str, mysql_version: str) -> dict[str, str]:
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    ram = next((ln.split()[1] for ln in meminfo.splitlines() if ln.startswith("MemTotal")), "")
    cpu = ""
    if Path("/proc/cpuinfo").exists():
        cpu = next(
            (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
             if ln.startswith("model name")),
            "",
        )  # fmt: skip
    import orjson
    import psycopg
    import pymysql
    import sqlalchemy

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": f"{os.cpu_count()} x {cpu or platform.machine()}",
        "RAM": f"{int(ram) / 1024 / 1024:.1f} GiB" if ram else "?",
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "PostgreSQL": postgres_version,
        "MariaDB/MySQL": mysql_version,
        "SQLite": sqlite3.sqlite_version,
        "libraries": f"SQLAlchemy {sqlalchemy.__version__}, psycopg {psycopg.__version__}, "
        f"PyMySQL {pymysql.__version__}, orjson {orjson.__version__}",
    }


def _with_ratios(rows: list[Row]) -> list[Row]:
    """The round's rows, each with its ratio to its base row (and B's speed-up over P)."""
    by_name = {r.name: r for r in rows}
    for row in rows:
        row.result["ratio"] = row.wall / by_name[TARGETS[row.name][2]].wall
    if "B" in by_name and peer.NAME in by_name:
        by_name["B"].result["times_faster_than_peer"] = by_name[peer.NAME].wall / by_name["B"].wall
    return rows


def _medians(rounds: list[list[Row]]) -> list[Row]:
    """One row per scenario: the median wall time and ratios, the highest peak RSS."""
    medians = []
    for row in rounds[0]:
        same = [r for rows in rounds for r in rows if r.name == row.name]
        result = dict(row.result)
        for key in ("wall", "ratio", "times_faster_than_peer", "cpu_s", "database_cpu_s"):
            values = [float(r.result[key]) for r in same if key in r.result]
            if values:
                result[key] = statistics.median(values)
        result["rss_mib"] = max(float(r.result["rss_mib"]) for r in same)
        result["walls"] = [float(r.result["wall"]) for r in same]
        medians.append(Row(row.name, row.calls, result))
    return medians


def _table(rows: list[Row]) -> tuple[str, list[str]]:
    lines = [
        "| | scenario | records | wall s | records/s | CPU s: client, database | peak RSS MiB "
        "| ratio | target | met |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    missed = []
    for row in rows:
        what, limit, base = TARGETS[row.name]
        ratio = float(row.result["ratio"])
        rate = row.calls / row.wall
        rss = float(row.result["rss_mib"])
        walls = row.result.get("walls", [])
        wall = f"{row.wall:.2f}" + (
            f" ({', '.join(f'{w:.2f}' for w in walls)})" if len(walls) > 1 else ""
        )
        cpu = _cpu_cell(row.result)
        targets = []
        met = rss < MAX_RSS_MIB
        if row.name == peer.NAME:
            lines.append(
                f"| {row.name} | {what} | {row.calls:,} | {wall} | {rate:,.0f} | {cpu} | "
                f"{rss:.0f} | {ratio:.2f}x {base} | none (a peer) | — |"
            )
            continue
        if limit is not None:
            targets.append(f"≤ {limit:g}x {base}")
            met = met and ratio <= limit
        if row.name == "B":
            targets.append(f"≥ {MIN_CALLS_PER_SECOND_B:,} calls/s")
            met = met and rate >= MIN_CALLS_PER_SECOND_B
            faster = row.result.get("times_faster_than_peer")
            if faster is not None:
                targets.append(f"≥ {MIN_TIMES_FASTER_THAN_PEER:g}x faster than P ({faster:.1f}x)")
                met = met and faster >= MIN_TIMES_FASTER_THAN_PEER
        targets.append(f"RSS < {MAX_RSS_MIB}")
        if not met:
            missed.append(row.name)
        lines.append(
            f"| {row.name} | {what} | {row.calls:,} | {wall} | {rate:,.0f} | {cpu} | {rss:.0f} "
            f"| {ratio:.2f}x {base} | {', '.join(targets)} | {'yes' if met else '**no**'} |"
        )
    return "\n".join(lines), missed


def _cpu_cell(result: dict[str, Any]) -> str:
    """The scenario process's CPU seconds and the database servers' (— where not seen)."""
    client = result.get("cpu_s")
    server = result.get("database_cpu_s")
    return ", ".join("—" if v is None else f"{float(v):.1f}" for v in (client, server))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200_000, help="calls in all (200,000)")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--latency-ms", type=float, default=50.0, help="for A' and F (50)")
    parser.add_argument("--concurrency", type=int, default=4, help="batches at once (4)")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("ULTRAVOX_ETL_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL),
        help="a database on the server to use; scratch databases are made beside it",
    )
    parser.add_argument(
        "--mysql-url",
        default=os.environ.get("ULTRAVOX_ETL_TEST_MYSQL_URL", DEFAULT_MYSQL_URL),
        help="a MariaDB/MySQL database to connect to; scratch databases are made beside it",
    )
    parser.add_argument("--rounds", type=int, default=1, help="the sequence N times: medians")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--smoke", action="store_true", help="5,000 calls in 5 batches")
    parser.add_argument("--profile", type=Path, help="write <DIR>/<scenario>.prof (cProfile)")
    parser.add_argument(
        "--gc-threshold",
        type=lambda text: [int(n) for n in text.split(",")],
        help="experiment: gc.freeze() and gc.set_threshold(T0,T1,T2) in every scenario",
    )
    peer.add_arguments(parser)
    parser.add_argument("--scenario", help=argparse.SUPPRESS)  # internal: one scenario, as JSON
    args = parser.parse_args(argv)

    if args.scenario:
        print(json.dumps(run_scenario(json.loads(args.scenario))))
        return 0
    if args.smoke:
        args.calls, args.batches = 5_000, 5
    per_batch = args.calls // args.batches
    calls = per_batch * args.batches
    args.py_spy = None
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        args.py_spy = shutil.which("py-spy")
        if args.py_spy is None:
            print("py-spy is not on PATH: cProfile, main thread only", file=sys.stderr)

    dlt_peer = peer.prepare(args)
    postgres = ScratchDatabases(args.postgres_url)
    mariadb = ScratchDatabases(args.mysql_url)
    tmp = tempfile.TemporaryDirectory(prefix="etl-bench-")
    rounds: list[list[Row]] = []
    try:
        for number in range(1, args.rounds + 1):
            if args.rounds > 1:
                print(f"round {number} of {args.rounds}", file=sys.stderr, flush=True)
            round_rows = _one_round(args, per_batch, postgres, mariadb, dlt_peer, Path(tmp.name))
            rounds.append(_with_ratios(round_rows))
    finally:
        postgres.drop_all()
        mariadb.drop_all()
        tmp.cleanup()

    rows = _medians(rounds)
    by_name = {r.name: r for r in rows}
    table, missed = _table(rows)
    problems = [p for round_rows in rounds for r in round_rows for p in r.problems()]
    machine = _machine(postgres.version, mariadb.version)
    changed = rounds[0][0].result.get("changed", 0)
    settings = (
        f"{calls:,} calls in {args.batches} batches, pages of {args.page_size:,}, "
        f"concurrency {args.concurrency}, latency for A' and F {args.latency_ms:g} ms, "
        f"client rate cap {RATE_CAP:,.0f} requests/s"
        + (f", gc.set_threshold{tuple(args.gc_threshold)}" if args.gc_threshold else "")
        + f"; E: {changed:,} calls changed status"
        + (f"; medians of {args.rounds} rounds (each round's wall times in brackets)"
           if args.rounds > 1 else "")
    )  # fmt: skip
    report = "\n".join(
        [
            "# Sync benchmark" + (" (smoke)" if args.smoke else ""),
            "",
            f"`python -m bench.run {' '.join(argv if argv is not None else sys.argv[1:])}`".replace(
                " `", "`"
            ),
            "",
            settings + ".",
            "",
            table,
            "",
            *peer.report_lines(dlt_peer, by_name, RATE_CAP),
            "",
            "Records: scheduled calls, plus created calls in the rows marked both streams. "
            "Ratio: wall time over the base row's (A's; A2's for both streams; A''s for F), "
            "the median of the rounds' ratios. CPU: the scenario's own processes while timed "
            "(P: dlt's, its normalize workers included), and the local database servers' "
            "(P: its setup of dlt's own tables included; — if not on this machine); "
            "medians. Peak RSS: the scenario's own process (each runs in a fresh one), the "
            "highest of the rounds.",
            "",
            "Machine: " + "; ".join(f"{k} {v}" for k, v in machine.items()) + ".",
            "",
            ("Targets missed: " + ", ".join(missed) + ".") if missed else "Every target met.",
            *([""] + [f"Problem: {p}" for p in problems] if problems else []),
            "",
        ]
    )
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report, encoding="utf-8")
    print(f"written to {args.out}", file=sys.stderr)
    return 1 if problems else 0


def _one_round(
    args: argparse.Namespace,
    per_batch: int,
    postgres: ScratchDatabases,
    mariadb: ScratchDatabases,
    dlt_peer: peer.Peer,
    tmp: Path,
) -> list[Row]:
    """Every scenario once, against a fresh fake API; the rows in the order they ran."""
    calls = per_batch * args.batches
    server = FakeServer(args.batches, per_batch)
    rows: list[Row] = []
    try:
        base = {
            **{k: server.hello[k] for k in ("base_url", "api_key", "agent_id", "batches")},
            "page_size": args.page_size,
            "concurrency": args.concurrency,
            "gc_threshold": args.gc_threshold,
        }
        both = ["scheduled_calls", "calls"]

        def run(
            name: str,
            kind: str,
            database_url: str | None = None,
            checks: list[Check] | None = None,
            streams: list[str] | None = None,
        ) -> Row:
            spec = {**base, "name": name, "kind": kind, "database_url": database_url,
                    "streams": streams or ["scheduled_calls"]}  # fmt: skip
            if args.profile:
                stem = args.profile / name.replace("'", "_latency")
                spec["profile"] = str(stem.with_suffix(".txt" if args.py_spy else ".prof"))
                spec["py_spy"] = args.py_spy
            print(f"… {name}: {TARGETS[name][0]}", file=sys.stderr, flush=True)
            result = in_child(spec)
            row = Row(name, int(result["fetched"]), result, checks or [])
            print(f"  {row.wall:.2f} s", file=sys.stderr, flush=True)
            rows.append(row)
            return row

        every_call = counts(fetched=calls)
        run("A", "fetch", checks=every_call)
        pg_url = postgres.fresh()
        run("B", "sync", pg_url, every_call + counts(inserted=calls))
        if dlt_peer.runs:  # before E's changes and any latency: B's calls
            print(f"… {peer.NAME}: {peer.WHAT}", file=sys.stderr, flush=True)
            peer_url = postgres.fresh()
            with CpuClock() as around_peer:
                result = peer.run(dlt_peer, server.hello, peer_url, page_size=args.page_size,
                                  concurrency=args.concurrency, rate_cap=RATE_CAP)  # fmt: skip
            if "database_cpu_s" in around_peer.spent:
                result["database_cpu_s"] = around_peer.spent["database_cpu_s"]
            rows.append(Row(peer.NAME, calls, result, every_call))
            print(f"  {rows[-1].wall:.2f} s", file=sys.stderr, flush=True)
        run("C", "sync", f"sqlite:///{tmp}/bench-{uuid.uuid4().hex[:8]}.db",
            every_call + counts(inserted=calls))  # fmt: skip
        run("M", "sync", mariadb.fresh(), every_call + counts(inserted=calls))
        run("D", "sync", pg_url, every_call + counts(unchanged=calls, inserted=0, updated=0))
        records = int(run("A2", "fetch", streams=both).result["fetched"])
        every_record = counts(fetched=records)
        both_url = postgres.fresh()
        run("B2", "sync", both_url, every_record + counts(inserted=records), both)
        run("D2", "sync", both_url,
            every_record + counts(unchanged=records, inserted=0, updated=0), both)  # fmt: skip
        changed = int(server.command("advance 0.3").split()[-1])
        rows[0].result["changed"] = changed
        # Twins (calls alike but for their status, no callId yet) are matched by state, so a
        # change may leave a twin's row as it was: never more updated than changed.
        at_most_changed: list[Check] = [
            (f"updated ≤ {changed:,}", lambda r: r["scheduled_calls"]["updated"] <= changed),
            ("no scheduled call inserted", lambda r: r["scheduled_calls"]["inserted"] == 0),
            ("inserted + updated + unchanged = fetched, nothing removed",
             lambda r: r["inserted"] + r["updated"] + r["unchanged"] == r["fetched"]
             and r["removed"] == 0),
        ]  # fmt: skip
        run("E", "sync", pg_url, every_call + at_most_changed)
        run("E2", "sync", both_url, at_most_changed, both)
        server.command(f"latency {args.latency_ms / 1000}")
        run("A'", "fetch", checks=every_call)
        run("F", "sync", postgres.fresh(), every_call + counts(inserted=calls))
    finally:
        server.close()
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
