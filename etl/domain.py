"""The words of the domain, defined once: statuses, medium types, end reasons, counts.

Everything that names a status, a medium, a run outcome or a count takes it from here: the
normalizers, the loaders, the run records, the summary line, the JSON logs, the progress
lines and the metrics. Adding a count or a status value means changing this module (and a
migration if a table gains a column), nothing else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

# -- scheduled calls ----------------------------------------------------------------------------


class ScheduledCallStatus(StrEnum):
    """The statuses the API documents; a value it adds later is stored as sent."""

    FUTURE = "FUTURE"
    PENDING = "PENDING"
    SUCCESS = "SUCCESS"
    EXPIRED = "EXPIRED"
    ERROR = "ERROR"


KNOWN_STATUSES = frozenset(s.value for s in ScheduledCallStatus)
WAITING_STATUSES = frozenset({ScheduledCallStatus.FUTURE.value, ScheduledCallStatus.PENDING.value})
FINAL_STATUSES = KNOWN_STATUSES - WAITING_STATUSES

_STATUS_RANK = {
    ScheduledCallStatus.FUTURE.value: 0,
    ScheduledCallStatus.PENDING.value: 1,
    ScheduledCallStatus.SUCCESS.value: 3,
    ScheduledCallStatus.EXPIRED.value: 3,
    ScheduledCallStatus.ERROR.value: 3,
}
_UNKNOWN_STATUS_RANK = 2
"""A status the API added later: after the waiting ones, before the final ones."""


def status_rank(status: str) -> int:
    """How far along FUTURE → PENDING → final a status is; a call only moves forward."""
    return _STATUS_RANK.get(status, _UNKNOWN_STATUS_RANK)


class MediumType(StrEnum):
    """The call media the API documents (`ultravox.v1.CallMedium`)."""

    WEB_RTC = "webRtc"
    TWILIO = "twilio"
    SERVER_WEB_SOCKET = "serverWebSocket"
    TELNYX = "telnyx"
    PLIVO = "plivo"
    EXOTEL = "exotel"
    SIP = "sip"


KNOWN_MEDIUM_TYPES = tuple(m.value for m in MediumType)
DEFAULT_MEDIUM_TYPE = MediumType.WEB_RTC.value
"""What an absent `medium` means: the documented default."""

# -- calls --------------------------------------------------------------------------------------


class EndReason(StrEnum):
    """Why a call ended (`EndReasonEnum`); a later value is stored as sent."""

    UNJOINED = "unjoined"
    HANGUP = "hangup"
    AGENT_HANGUP = "agent_hangup"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    SYSTEM_ERROR = "system_error"


BILLING_PENDING = "BILLING_STATUS_PENDING"
"""The billing status of a call not billed yet; every other value is final."""

# -- runs ---------------------------------------------------------------------------------------


class BatchStatus(StrEnum):
    """How one batch ended within one run (`etl_batch_runs.status`)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    LOCKED = "locked"
    """Not synced: another run was syncing the batch for longer than the lock wait."""
    SKIPPED = "skipped"
    """Not listed: the batch has ended and everything stored of it is final (see `note`)."""
    REMOVED = "removed"
    """The API no longer has this batch, which the job knew; its calls are kept."""
    ABANDONED = "abandoned"
    """Its run's process died before the batch finished (found so by a later run)."""


SYNCED_BATCH_STATUSES = frozenset({BatchStatus.SUCCEEDED, BatchStatus.SKIPPED, BatchStatus.REMOVED})
"""Outcomes that leave the batch's data as current as the API's."""


class RunStatus(StrEnum):
    """How a run ended (`etl_runs.status`)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    """Every batch synced (or was skipped as complete, or found removed)."""
    PARTIAL = "partial"
    """Some batches synced; others failed or were locked by another run."""
    FAILED = "failed"
    """No batch synced, or the run was stopped (signal, refused key, unreachable API)."""
    ABANDONED = "abandoned"
    """The process died without finishing the run (found so by a later run)."""


EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TRY_LATER = 75
"""EX_TEMPFAIL: no batch could be synced because another run holds them; try later."""


# -- counts ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class StreamCounts:
    """What one listing of one stream did to its rows. The field names are the count names:
    columns of etl_stream_runs / etl_batch_runs, keys of JSON logs and `runs --json`,
    outcomes of the metrics. Add a count here (and a column by migration) and every report
    carries it."""

    pages: int = 0
    fetched: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    rejected: int = 0
    api_total: int | None = None
    """The API's `total` for the listing (the sum over filtered listings)."""

    NAMES: ClassVar[tuple[str, ...]]
    ROW_OUTCOMES: ClassVar[tuple[str, ...]] = (
        "inserted",
        "updated",
        "unchanged",
        "removed",
        "rejected",
    )
    """The counts that say what happened to a row; the others say how much was read."""

    def as_dict(self) -> dict[str, int | None]:
        return {name: getattr(self, name) for name in self.NAMES}

    def add(self, other: StreamCounts) -> None:
        """Add `other`'s counts to these (api_total too, where either knows it)."""
        for name in self.NAMES:
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine is None or theirs is None:
                setattr(self, name, theirs if mine is None else mine)
            else:
                setattr(self, name, mine + theirs)


StreamCounts.NAMES = tuple(f.name for f in dataclasses.fields(StreamCounts))
COUNT_NAMES = StreamCounts.NAMES
SUMMED_COUNT_NAMES = tuple(name for name in COUNT_NAMES if name != "api_total")
"""The counts a run record adds up over its batches and streams."""

# -- limits ---------------------------------------------------------------------------------------
# Text that is part of a key or an index has a bounded length on some databases (VARCHAR on
# MySQL). A record whose value would not fit is rejected with its reason, on every database
# alike, rather than failing its page on one of them.

ID_MAX_LENGTH = 64
"""batchId, callId, agentId: UUIDs (36 characters) in practice."""
NAME_MAX_LENGTH = 255
"""Statuses, data message names and other short names that are indexed."""
METADATA_KEY_MAX_CHARACTERS = 500
METADATA_KEY_MAX_BYTES = 1000
"""A longer metadata key gets no key/value row (MySQL and PostgreSQL cannot index it); the
record's metadata JSON keeps it whole."""
