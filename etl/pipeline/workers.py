"""Threads of a run: batch workers, the page prefetcher, and stopping them on a signal.

A run syncs up to `[api] concurrency` batches at once on worker threads; the main thread only
waits, so the signal handlers (which run on the main thread) stay prompt. Within a batch, a
helper thread fetches the next page while the current one loads.
"""

from __future__ import annotations

import queue
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

INTERRUPT_GRACE_SECONDS = 5.0
PREFETCH_PAGES = 1
_POLL_SECONDS = 0.2


class Interrupted(BaseException):
    """The run was asked to stop by a signal; a BaseException, like KeyboardInterrupt."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    def __str__(self) -> str:
        return signal.Signals(self.signum).name


class Stopped(Exception):
    """Raised inside a worker when the run is stopping."""


def stoppable_sleep(stop: threading.Event) -> Callable[[float], None]:
    """A sleep that ends early, with Stopped, when the run is stopping."""

    def sleep(seconds: float) -> None:
        if stop.wait(seconds):
            raise Stopped

    return sleep


def run_on_workers(
    items: Sequence[T], work: Callable[[T], None], *, workers: int, stop: threading.Event
) -> None:
    """Call `work(item)` for every item on up to `workers` threads, until done or `stop`.

    `work` must not raise: it records its own failures. The main thread waits in short
    steps, so a signal interrupts it at once; then `stop` is set and the workers get a grace
    period to finish their current page before the exception propagates.
    """
    pending: queue.SimpleQueue[T] = queue.SimpleQueue()
    for item in items:
        pending.put(item)

    def loop() -> None:
        while not stop.is_set():
            try:
                item = pending.get_nowait()
            except queue.Empty:
                return
            work(item)

    threads = [
        threading.Thread(target=loop, name=f"batch-worker-{n}", daemon=True)
        for n in range(min(workers, len(items)))
    ]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(timeout=_POLL_SECONDS)
    except BaseException:
        stop.set()
        for thread in threads:
            thread.join(timeout=INTERRUPT_GRACE_SECONDS / max(1, len(threads)))
        raise


def prefetched(pages: Iterator[T], stop: threading.Event) -> Iterator[T]:
    """Fetch the next pages on a helper thread while the caller loads the current one."""
    slots: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=PREFETCH_PAGES)
    done = threading.Event()

    def fetch() -> None:
        try:
            for page in pages:
                while not done.is_set():
                    try:
                        slots.put(("page", page), timeout=_POLL_SECONDS)
                        break
                    except queue.Full:
                        continue
                if done.is_set():
                    return
            slots.put(("end", None))
        except BaseException as exc:  # handed to the consumer, which re-raises it
            slots.put(("error", exc))

    fetcher = threading.Thread(target=fetch, name="page-prefetch", daemon=True)
    fetcher.start()
    try:
        while True:
            if stop.is_set():
                raise Stopped
            try:
                kind, item = slots.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                continue
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        done.set()
