"""Named locks that one process holds while it works, released when it ends, however it ends.

Two uses: a batch is synced by one run at a time ("batch:<id>"), and a run holds "run:<id>"
for its lifetime, so the next run can tell a crashed run (lock free) from a live one.

- PostgreSQL: session-level advisory locks, each on its own connection; the server drops them
  when the connection dies, so a SIGKILLed run releases them.
- SQLite: `flock` on one small file per name in a folder beside the database file; the kernel
  drops it when the process dies.
- An in-memory SQLite database is private to one process and needs no locks.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from sqlalchemy import Connection, Engine, text

POLL_SECONDS = 0.2


class Lock(Protocol):
    def release(self) -> None: ...


class Locks(Protocol):
    def try_acquire(self, name: str, *, disposable: bool = False) -> Lock | None:
        """The lock if it was free, else None; never waits.

        `disposable`: the name will not be locked again once released (a run's own lock),
        so any file behind it can go.
        """
        ...


def acquire(
    locks: Locks,
    name: str,
    wait_seconds: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
) -> Lock | None:
    """Wait up to `wait_seconds` for `name`; None if it stayed taken."""
    deadline = monotonic() + wait_seconds
    while True:
        lock = locks.try_acquire(name)
        if lock is not None:
            return lock
        remaining = deadline - monotonic()
        if remaining <= 0:
            return None
        sleep(min(POLL_SECONDS, remaining))


def lock_key(name: str) -> int:
    """A signed 64-bit advisory lock key for a name, stable across processes and versions."""
    digest = hashlib.sha256(f"ultravox-etl:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class _AdvisoryLock:
    def __init__(self, conn: Connection, key: int) -> None:
        self._conn = conn
        self._key = key

    def release(self) -> None:
        with contextlib.closing(self._conn):
            self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
            self._conn.commit()


class PostgresLocks:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def try_acquire(self, name: str, *, disposable: bool = False) -> Lock | None:
        key = lock_key(name)
        conn = self.engine.connect()
        try:
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar_one()
            conn.commit()
        except BaseException:
            conn.close()
            raise
        if not got:
            conn.close()
            return None
        return _AdvisoryLock(conn, key)


class _FileLock:
    def __init__(self, fd: int, path: Path | None) -> None:
        self._fd = fd
        self._path = path

    def release(self) -> None:
        try:
            if self._path is not None:
                # Removed while still held: nobody can be waiting on this name's file.
                self._path.unlink(missing_ok=True)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)


class FileLocks:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def try_acquire(self, name: str, *, disposable: bool = False) -> Lock | None:
        # Files of names locked again and again (batches) are kept: removing one could let
        # two processes lock two different files under the same name.
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"{name.replace(':', '-')}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        return _FileLock(fd, path if disposable else None)


class _NoLock:
    def release(self) -> None:
        return None


class ProcessLocalLocks:
    """For a database only this process can see (in-memory SQLite)."""

    def try_acquire(self, name: str, *, disposable: bool = False) -> Lock | None:
        return _NoLock()


def locks_for(engine: Engine) -> Locks:
    if engine.dialect.name == "postgresql":
        return PostgresLocks(engine)
    database = engine.url.database
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return ProcessLocalLocks()
    return FileLocks(Path(f"{database}.locks"))
