"""One circuit per run: once the API host is known to be unreachable, the run stops trying it.

Every request of a run goes through one client, so through one HostCircuit. It has three
states:

- closed: requests go out.
- probing: an attempt could not reach the host (refused, DNS, TLS, connect timeout). That
  request goes on retrying on its own schedule; every other request holds its next attempt
  until the outcome is known. A dead host sees one request's attempts instead of one per
  worker thread, and a host that comes back within the retry budget costs nothing: the first
  answer from it, to any request, releases them all.
- open: a request spent its whole retry budget and the host answered nobody in that time.
  Every request of the run then fails at once with the same diagnosis (the Outage).

Why "one request's whole budget" and not "N failures in a row across threads": four threads
in step make N failures with a quarter of the attempts each, and with exponential backoff in
a small part of the time (6 failures: about 1 s instead of 16 s with the defaults), so a
five-second restart of the API would fail a whole run. One request's budget (`max_attempts`,
`max_wait_seconds`) is exactly what a single batch already tolerated, and holding the other
requests keeps the attempts to that one budget. Only failures to connect count: an HTTP
status (429, 5xx), a read timeout or a body cut short come from a host that is up, so like a
success they end the probing and start the count again.

There is no half-open state: once a run has found the host down for a whole retry budget,
none of its requests tries again (each raises ApiUnreachable at once, so the run can end);
the next run starts with a new client, closed.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


def attempts_text(attempts: int) -> str:
    return f"{attempts} attempt" if attempts == 1 else f"{attempts} attempts"


@dataclass(frozen=True, slots=True)
class Outage:
    """Why the circuit opened: which host, the cause, and how long one request tried it."""

    endpoint: str
    """host:port of the configured base URL."""
    cause: str
    """In plain words, e.g. "connection refused" (see etl.extract.transport)."""
    attempts: int
    seconds: float

    def __str__(self) -> str:
        tried = f"{attempts_text(self.attempts)} over {self.seconds:.1f}s"
        return f"{self.endpoint} unreachable: {self.cause} ({tried})"


@dataclass(eq=False, slots=True)
class Ticket:
    """One request's standing with the circuit, from its first attempt to its last."""

    answers_before: int
    """How many attempts had reached the host when the request began."""
    opened_circuit: bool = False


class HostCircuit:
    """Whether the API host can be reached at all, shared by every thread of a run."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self._changed = threading.Condition()
        self._answers = 0
        self._prober: Ticket | None = None
        self._outage: Outage | None = None
        self._holding = 0

    @property
    def outage(self) -> Outage | None:
        """Set once the circuit is open; it stays open for the life of the client."""
        with self._changed:
            return self._outage

    @property
    def holding(self) -> int:
        """Requests waiting for the outcome of another request's attempts to reach the host."""
        with self._changed:
            return self._holding

    @contextmanager
    def ticket(self) -> Iterator[Ticket]:
        """Held by one request for all its attempts.

        On exit, a request that was finding out for the others and ended without an outcome
        (its thread was interrupted, a bug) lets them go, so no request holds for ever.
        """
        with self._changed:
            ticket = Ticket(answers_before=self._answers)
        try:
            yield ticket
        finally:
            with self._changed:
                if self._prober is ticket:  # it ended without an outcome, e.g. a bug
                    self._prober = None
                    self._changed.notify_all()

    def admit(self, ticket: Ticket) -> Outage | None:
        """Before an attempt: None when it may go (perhaps after waiting), else the Outage."""
        with self._changed:
            if not self._may_attempt(ticket):
                self._holding += 1
                try:
                    self._changed.wait_for(lambda: self._may_attempt(ticket))
                finally:
                    self._holding -= 1
            return self._outage

    def _may_attempt(self, ticket: Ticket) -> bool:
        return self._outage is not None or self._prober is None or self._prober is ticket

    def host_answered(self) -> None:
        """An attempt reached the host (any HTTP status, or a connection that broke later)."""
        with self._changed:
            self._answers += 1
            if self._prober is not None:
                self._prober = None
                self._changed.notify_all()

    def host_unreachable(self, ticket: Ticket) -> None:
        """An attempt of `ticket` could not connect; unless another request is finding out
        whether the host is down, this one does, and the others hold their attempts."""
        with self._changed:
            if self._prober is None and self._outage is None:
                self._prober = ticket

    def give_up(self, ticket: Ticket, cause: str, attempts: int, seconds: float) -> Outage | None:
        """The request spent its retries, the last one on an unreachable host.

        Opens the circuit if no attempt of any request reached the host since this request
        began; returns the Outage if the circuit is open (now or before).
        """
        with self._changed:
            if self._outage is None and self._answers == ticket.answers_before:
                self._outage = Outage(self.endpoint, cause, attempts, seconds)
                ticket.opened_circuit = True
                self._changed.notify_all()
            return self._outage
