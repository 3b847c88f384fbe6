"""Per-batch and per-run locks hold across processes and die with their holder."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from sqlalchemy import Engine

from etl.load.backends import acquire
from etl.load.database import locks_for

HOLDER = """
import sys, time
from etl.load.database import locks_for, open_engine
lock = locks_for(open_engine(sys.argv[1])).try_acquire(sys.argv[2])
print("held" if lock else "busy", flush=True)
time.sleep(60)
"""


def start_holder(database_url: str, name: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, database_url, name],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def test_a_lock_held_by_another_process_is_busy_until_that_process_dies(
    engine: Engine, database_url: str
) -> None:
    locks = locks_for(engine)
    proc, state = start_holder(database_url, "batch:b1")
    try:
        assert state == "held"
        assert locks.try_acquire("batch:b1") is None
        other = locks.try_acquire("batch:b2")  # other names are independent
        assert other is not None
        other.release()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    lock = acquire(locks, "batch:b1", wait_seconds=10)
    assert lock is not None
    lock.release()


def test_release_frees_the_lock_for_another_process(engine: Engine, database_url: str) -> None:
    lock = locks_for(engine).try_acquire("run:7")
    assert lock is not None
    proc, state = start_holder(database_url, "run:7")
    proc.kill()
    proc.wait()
    assert state == "busy"
    lock.release()
    proc, state = start_holder(database_url, "run:7")
    proc.kill()
    proc.wait()
    assert state == "held"


def test_acquire_waits_then_gives_up(engine: Engine, database_url: str) -> None:
    proc, state = start_holder(database_url, "batch:slow")
    try:
        assert state == "held"
        started = time.monotonic()
        assert acquire(locks_for(engine), "batch:slow", wait_seconds=0.5) is None
        assert time.monotonic() - started >= 0.5
    finally:
        proc.kill()
        proc.wait()
