"""One scheduled call batch as the fake holds it: its scheduled calls, the calls they created,
and how its listings are ordered.

The Calls are not stored: `created_calls` lists one for each scheduled call that has a
`callId`, generated from that scheduled call when it is served (see etl.fake_api.calls), so
a batch of a million scheduled calls costs nothing until its created calls are listed.
What is stored is what a generator cannot know: which calls still wait for their billing,
which were deleted, and the Call records a test made by hand.

FakeBatch's methods expect the caller (FakeUltravox) to hold its lock.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Self, TypeVar

from etl.fake_api.calls import generate_call
from etl.fake_api.scheduled_calls import ERRORS, OPEN_STATUSES, STATUSES, seeded_uuid
from etl.fake_api.wire import RawRecord, now_timestamp, parse_object

ListingOrder = Literal["stored", "reversed", "shuffled"]
LISTING_ORDERS: tuple[ListingOrder, ...] = ("stored", "reversed", "shuffled")
"""How a batch's listings are served. The API does not document its sort order, so a client
must not depend on one: "stored" is the order of FakeBatch.calls, "shuffled" a permutation
seeded by the batch id and FakeBatch.order_seed (the same while the batch keeps its size)."""

_Item = TypeVar("_Item")

CreatedCallEntry = tuple[str, Mapping[str, Any] | None]
"""A listed created call: its callId and the scheduled call that created it (None for a
hand-made Call no scheduled call names)."""


class CallList(list[dict[str, Any]]):
    """A batch's scheduled calls: a list that counts the changes made to it, so that what is
    derived from it (the created calls' listing) is computed again only after one."""

    changes = 0

    def _changed(self) -> None:
        self.changes += 1

    def __setitem__(self, index: Any, value: Any) -> None:
        super().__setitem__(index, value)
        self._changed()

    def __delitem__(self, index: Any) -> None:
        super().__delitem__(index)
        self._changed()

    # list's own `+=` does not go through `extend`; typeshed's list has the same ignore.
    def __iadd__(self, values: Iterable[dict[str, Any]], /) -> Self:  # type: ignore[override,misc]
        self.extend(values)
        return self

    def append(self, value: dict[str, Any]) -> None:
        super().append(value)
        self._changed()

    def extend(self, values: Any) -> None:
        super().extend(values)
        self._changed()

    def insert(self, index: Any, value: dict[str, Any]) -> None:
        super().insert(index, value)
        self._changed()

    def pop(self, index: Any = -1) -> dict[str, Any]:
        value = super().pop(index)
        self._changed()
        return value

    def remove(self, value: dict[str, Any]) -> None:
        super().remove(value)
        self._changed()

    def clear(self) -> None:
        super().clear()
        self._changed()

    def sort(self, *args: Any, **kwargs: Any) -> None:
        super().sort(*args, **kwargs)
        self._changed()

    def reverse(self) -> None:
        super().reverse()
        self._changed()


@dataclass
class FakeBatch:
    """One scheduled call batch, its scheduled calls and the calls they created."""

    agent_id: str
    batch_id: str
    calls: list[dict[str, Any]]
    created: str
    window_start: str | None = None
    window_end: str | None = None
    throttle: str | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None
    paused: bool = False
    ended_at: str | None = None
    hand_made_calls: dict[str, Mapping[str, Any]] = field(default_factory=dict)
    """Call records by callId, served as given: in place of the generated Call of a
    scheduled call with that callId, or after the generated ones."""
    billing_pending: set[str] = field(default_factory=set)
    """callIds whose Call is still in progress, billing pending: those created by the
    latest `advance` step or by `set_call`. Calls the fake never saw created are billed."""
    deleted_call_ids: set[str] = field(default_factory=set)
    """Calls deleted (as a retention policy does): absent from created_calls although a
    scheduled call still names them."""
    order: ListingOrder = "stored"
    order_seed: int = 0
    _created_calls_changes: int = field(default=0, repr=False, compare=False)
    """Changes to what the created calls' listing holds besides `calls`: Calls made by hand,
    deleted."""
    _created_call_entries: tuple[Any, list[CreatedCallEntry]] | None = field(
        default=None, repr=False, compare=False
    )
    """(what it was derived from, the created calls' listing): a large batch's listing is
    derived once per change, not once per page served."""

    def __post_init__(self) -> None:
        self.calls = CallList(self.calls)

    def as_api(self) -> dict[str, Any]:
        """The ScheduledCallBatch JSON object (without the write-only `calls`)."""
        completed = sum(1 for c in self.calls if c.get("status") not in OPEN_STATUSES)
        return {
            "batchId": self.batch_id,
            "created": self.created,
            "windowStart": self.window_start,
            "windowEnd": self.window_end,
            "throttle": self.throttle,
            "webhookUrl": self.webhook_url,
            "webhookSecret": self.webhook_secret,
            "paused": self.paused,
            "totalCount": len(self.calls),
            "completedCount": completed,
            "endedAt": self.ended_at,
        }

    def describe(self) -> dict[str, Any]:
        """Where the batch stands, as JSON: calls per status, created calls, billing."""
        statuses = dict.fromkeys(STATUSES, 0)
        for call in self.calls:
            status = str(call.get("status"))
            statuses[status] = statuses.get(status, 0) + 1
        created = self.created_call_entries()
        return {
            "agentId": self.agent_id,
            "batchId": self.batch_id,
            "calls": len(self.calls),
            "statuses": statuses,
            "createdCalls": len(created),
            "billingPending": sum(1 for call_id, _ in created if call_id in self.billing_pending),
            "endedAt": self.ended_at,
            "order": self.order,
        }

    # -- listings ----------------------------------------------------------------------------

    def listed_calls(self, status: str = "") -> Sequence[dict[str, Any]]:
        """The scheduled calls in listing order, only those in `status` if it is given."""
        ordered = self._ordered(self.calls)
        return [c for c in ordered if c.get("status") == status] if status else ordered

    def created_call_entries(self) -> list[CreatedCallEntry]:
        """The created calls in listing order, as (callId, scheduled call) pairs."""
        calls = self.calls
        if not isinstance(calls, CallList):  # a plain list set in place of ours: changes unseen
            return self._derived_created_call_entries()
        derived_from = (
            id(calls),
            calls.changes,
            self._created_calls_changes,
            self.order,
            self.order_seed,
        )
        if self._created_call_entries is None or self._created_call_entries[0] != derived_from:
            self._created_call_entries = (derived_from, self._derived_created_call_entries())
        return self._created_call_entries[1]

    def _derived_created_call_entries(self) -> list[CreatedCallEntry]:
        entries: list[CreatedCallEntry] = []
        listed: set[str] = set()
        for scheduled in self.calls:
            call_id = scheduled.get("callId")
            if (
                isinstance(call_id, str)
                and call_id not in listed
                and call_id not in self.deleted_call_ids
            ):
                listed.add(call_id)
                entries.append((call_id, scheduled))
        entries += [(call_id, None) for call_id in self.hand_made_calls if call_id not in listed]
        return self._ordered(entries)

    def created_call(self, entry: CreatedCallEntry) -> Mapping[str, Any]:
        """The Call record of an entry of `created_call_entries`."""
        call_id, scheduled = entry
        hand_made = self.hand_made_calls.get(call_id)
        if hand_made is not None:
            return hand_made
        assert scheduled is not None  # an entry without a scheduled call is a hand-made one
        return generate_call(
            agent_id=self.agent_id,
            batch_id=self.batch_id,
            batch_created=self.created,
            scheduled=scheduled,
            call_id=call_id,
            billed=call_id not in self.billing_pending,
        )

    def created_calls(self) -> list[Mapping[str, Any]]:
        """Every Call record `created_calls` lists, in listing order."""
        return [self.created_call(entry) for entry in self.created_call_entries()]

    def _ordered(self, items: list[_Item]) -> list[_Item]:
        if self.order == "reversed":
            return items[::-1]
        if self.order == "shuffled":
            shuffled = list(items)
            random.Random(f"{self.batch_id}|order|{self.order_seed}").shuffle(shuffled)
            return shuffled
        return items

    # -- changes -----------------------------------------------------------------------------

    def set_call(self, index: int, status: str, call_id: str | None, error: str | None) -> None:
        """Set one scheduled call's status, callId and error; a new callId is a call just
        created, so its billing is pending."""
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        # Copy-on-write: a page being serialized on another thread keeps the old object.
        updated = dict(self.calls[index])
        if call_id is not None and call_id != updated.get("callId"):
            self.billing_pending.add(call_id)
        updated.update(status=status, callId=call_id, error=error)
        self.calls[index] = updated

    def set_raw_record(self, index: int, raw: bytes) -> None:
        """Serve the scheduled call at `index` as exactly `raw`. If Python cannot read `raw`
        as an object, the fake goes on counting and filtering it as the call it replaced."""
        fields = parse_object(raw)
        self.calls[index] = RawRecord(raw, self.calls[index] if fields is None else fields)

    def advance(self, fraction: float, seed: int) -> int:
        """One step of time; returns how many scheduled calls changed status.

        The calls created by the previous step get their billing; then about `fraction` of
        the calls move one step along FUTURE -> PENDING -> SUCCESS (a few FUTURE calls
        expire and a few PENDING ones fail instead), each new callId with billing pending.
        Deterministic for a given state and seed.
        """
        if not 0.0 <= fraction <= 1.0:
            raise ValueError("fraction must be between 0 and 1")
        self.billing_pending.clear()
        rng = random.Random(f"{self.batch_id}|advance|{seed}")
        calls = self.calls
        movable = [i for i, c in enumerate(calls) if c.get("status") in OPEN_STATUSES]
        count = min(len(movable), round(fraction * len(calls)))
        for i in sorted(rng.sample(movable, count)):
            call = dict(calls[i])
            if call["status"] == "FUTURE":
                status = "EXPIRED" if rng.random() < 0.05 else "PENDING"
                call.update(status=status, callId=None, error=None)
            elif rng.random() < 0.08:
                call_id = seeded_uuid(rng) if rng.random() < 0.5 else None
                call.update(status="ERROR", callId=call_id, error=rng.choice(ERRORS))
            else:
                call.update(status="SUCCESS", callId=seeded_uuid(rng), error=None)
            if call["callId"] is not None:
                self.billing_pending.add(call["callId"])
            calls[i] = call
        if (
            count
            and self.ended_at is None
            and all(c.get("status") not in OPEN_STATUSES for c in calls)
        ):
            self.ended_at = now_timestamp()
        return count

    def finish_billing(self, call_id: str | None = None) -> int:
        """Bill one call whose billing is pending (KeyError if it is not), or all of them;
        returns how many were billed."""
        if call_id is not None:
            self.billing_pending.remove(call_id)
            return 1
        count = len(self.billing_pending)
        self.billing_pending.clear()
        return count

    def add_created_call(self, call_id: str, record: Mapping[str, Any]) -> None:
        """Serve `record` as the Call `call_id` (see hand_made_calls)."""
        self.deleted_call_ids.discard(call_id)
        self.hand_made_calls[call_id] = record
        self._created_calls_changes += 1

    def remove_created_call(self, call_id: str) -> None:
        """Delete a Call from the listing (KeyError if it is not listed)."""
        if call_id not in {entry[0] for entry in self.created_call_entries()}:
            raise KeyError(call_id)
        self.hand_made_calls.pop(call_id, None)
        self.deleted_call_ids.add(call_id)
        self._created_calls_changes += 1
