"""The reporting views and the README's example queries, on SQLite and PostgreSQL, against a
known data set synced through the real CLI from the fake API.

The queries are read from README.md's ```sql blocks, so the README cannot drift: every block
must have an expectation here, and every expectation a block.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, select

from etl.fake_api import FakeUltravox
from etl.load.backends import backend_for
from etl.load.schema import scheduled_call_status_changes, scheduled_calls
from tests.conftest import AGENT_ID, rows
from tests.test_history_discovery import (
    OTHER_AGENT,
    fetch,
    new_batch,
    run_window,
    sched_call,
    sync_config,
    synced,
)

README = Path(__file__).resolve().parent.parent / "README.md"

SPRING = "aaaaaaaa-0000-4000-8000-000000000001"
AUTUMN = "aaaaaaaa-0000-4000-8000-000000000002"
EMPTY = "aaaaaaaa-0000-4000-8000-000000000003"
CID = {n: f"cccccccc-0000-4000-8000-00000000000{n}" for n in range(1, 5)}
BUSY = "SIP 486 Busy Here"
GEO = "Twilio error 21215: Geo Permission configuration is not permitting call"
SKIP_NOTE = (
    "scheduled_calls: ended; all 3 stored calls are final; "
    "calls: ended; all 2 stored calls are billed, with their summaries; "
    "sync --full lists it anyway"
)


def telnyx(to: str) -> dict[str, Any]:
    return {"telnyx": {"outgoing": {"to": to, "from": "+12125550100"}}}


SIP = {
    "sip": {
        "outgoing": {
            "to": "sip:alice@example.com",
            "from": "sip:ultravox@pbx.example.com",
            "username": "agent07",
            "password": "s3cr3t-sip-pw-7",
        }
    }
}


@pytest.fixture
def data_set(
    fake_api: FakeUltravox, engine: Engine, database_url: str, run_cli: Any, tmp_path: Path
) -> Engine:
    """Two runs over three batches; statuses move, a call is deleted, a batch is skipped.

    After run 2 (removed calls left out):

    | batch  | call | to                    | campaign | run 1   | run 2            |
    |--------|------|-----------------------|----------|---------|------------------|
    | SPRING | s1   | +14155550101          | spring   | FUTURE  | SUCCESS cid1     |
    | SPRING | s2   | +14155550102          | spring   | PENDING | SUCCESS cid2     |
    | SPRING | s3   | +14155550101          | spring   | FUTURE  | ERROR (busy)     |
    | SPRING | s4   | +14155550103 (telnyx) | autumn   | FUTURE  | EXPIRED          |
    | SPRING | s5   | +14155550101          | autumn   | FUTURE  | FUTURE           |
    | SPRING | s6   | (webRtc)              | -        | PENDING | PENDING          |
    | SPRING | s7   | +14155550104          | spring   | FUTURE  | deleted: removed |
    | AUTUMN | a1   | +14155550102          | autumn   | SUCCESS cid3 (ended: skipped in run 2) |
    | AUTUMN | a2   | +14155550105          | autumn   | ERROR cid4 (geo)                       |
    | AUTUMN | a3   | sip:alice@example.com | spring   | EXPIRED                                |
    | EMPTY  | (no calls; another agent's batch, configured in [[batches]])                  |
    """
    spring = new_batch(
        fake_api,
        AGENT_ID,
        [
            sched_call("s1", to="+14155550101", campaign="spring"),
            sched_call("s2", "PENDING", to="+14155550102", campaign="spring"),
            sched_call("s3", to="+14155550101", campaign="spring"),
            sched_call("s4", medium=telnyx("+14155550103"), campaign="autumn"),
            sched_call("s5", to="+14155550101", campaign="autumn"),
            sched_call("s6", "PENDING", medium={"webRtc": {}}),
            sched_call("s7", to="+14155550104", campaign="spring"),
        ],
        batch_id=SPRING,
    )
    new_batch(
        fake_api,
        AGENT_ID,
        [
            sched_call("a1", "SUCCESS", to="+14155550102", call_id=CID[3], campaign="autumn"),
            sched_call(
                "a2", "ERROR", to="+14155550105", call_id=CID[4], error=GEO, campaign="autumn"
            ),
            sched_call("a3", "EXPIRED", medium=SIP, campaign="spring"),
        ],
        batch_id=AUTUMN,
        created="2025-02-20T10:00:00Z",  # its calls ended long ago: billed, summaries done
        window_start="2025-03-01T09:00:00Z",
        window_end="2025-03-01T17:00:00Z",
        paused=True,
        ended_at="2025-03-01T17:00:00Z",
    )
    empty = new_batch(fake_api, OTHER_AGENT, [], batch_id=EMPTY)
    config = sync_config(
        tmp_path,
        fake_api,
        database_url,
        batches=[empty],
        agents=[AGENT_ID],
        sync={"created_calls": True},
    )
    synced(run_cli, config)
    fake_api.set_call(SPRING, 0, status="SUCCESS", call_id=CID[1])
    fake_api.set_call(SPRING, 1, status="SUCCESS", call_id=CID[2])
    fake_api.set_call(SPRING, 2, status="ERROR", error=BUSY)
    fake_api.set_call(SPRING, 3, status="EXPIRED")
    del spring.calls[6]
    second = synced(run_cli, config)
    assert f"({SKIP_NOTE})" in second.stdout, second.stdout
    return engine


def as_utc(value: Any) -> datetime | None:
    """A timestamp from a text() query: a datetime (naive UTC on MariaDB), UTC text on SQLite."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def plain(value: Any) -> Any:
    """A value comparable across databases: numbers as floats, timestamps as UTC datetimes."""
    if isinstance(value, Decimal | float):
        return round(float(value), 3)
    if isinstance(value, datetime) or (
        isinstance(value, str) and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?", value)
    ):
        return as_utc(value)
    return value


def plain_rows(result: list[Any]) -> list[tuple[Any, ...]]:
    return [tuple(plain(v) for v in row) for row in result]


def as_json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


# -- the views -------------------------------------------------------------------------------


def test_batch_progress_counts_each_status_and_the_completed_share(data_set: Engine) -> None:
    engine = data_set
    found = rows(
        engine,
        "SELECT batch_id, agent_id, total_count, completed_count, calls, future, pending, "
        "success, expired, error, other_status, completed_share, paused, created, "
        "window_start, window_end, ended_at, last_synced_at, removed_at "
        "FROM batch_progress ORDER BY batch_id",
    )
    counts = [tuple(r)[:11] for r in found]
    assert counts == [
        # batch, agent, total, completed, calls, future, pending, success, expired, error, other
        (SPRING, AGENT_ID, 6, 4, 6, 1, 1, 2, 1, 1, 0),
        (AUTUMN, AGENT_ID, 3, 3, 3, 0, 0, 1, 1, 1, 0),
        (EMPTY, OTHER_AGENT, 0, 0, 0, 0, 0, 0, 0, 0, 0),
    ]
    spring, autumn, empty = found
    assert [plain(r.completed_share) for r in found] == [0.667, 1.0, None]
    assert [bool(r.paused) for r in found] == [False, True, False]
    assert (as_utc(autumn.window_start), as_utc(autumn.window_end), as_utc(autumn.ended_at)) == (
        datetime(2025, 3, 1, 9, tzinfo=UTC),
        datetime(2025, 3, 1, 17, tzinfo=UTC),
        datetime(2025, 3, 1, 17, tzinfo=UTC),
    )
    assert spring.window_start is None and spring.ended_at is None
    assert all(as_utc(r.created) is not None and r.removed_at is None for r in found)
    # last synced: the end of the last complete listing; AUTUMN was skipped in run 2.
    run1, run2 = run_window(engine, 1), run_window(engine, 2)
    assert run2[0] <= as_utc(spring.last_synced_at) <= run2[1]  # type: ignore[operator]
    assert run2[0] <= as_utc(empty.last_synced_at) <= run2[1]  # type: ignore[operator]
    assert run1[0] <= as_utc(autumn.last_synced_at) <= run1[1]  # type: ignore[operator]


def test_scheduled_call_report_has_one_row_per_call_with_its_medium_and_metadata(
    data_set: Engine,
) -> None:
    found = rows(
        data_set,
        "SELECT r.*, c.id AS own_id FROM scheduled_call_report r "
        "JOIN scheduled_calls c ON c.id = r.scheduled_call_id",
    )
    by_tag = {as_json(r.metadata)["tag"]: r for r in found}
    assert sorted(by_tag) == ["a1", "a2", "a3", "s1", "s2", "s3", "s4", "s5", "s6", "s7"]
    assert len(found) == 10

    def medium(tag: str) -> tuple[Any, ...]:
        r = by_tag[tag]
        return (r.medium_type, r.direction, r.to_address, r.from_address, r.sip_username)

    assert medium("s1") == ("twilio", "outgoing", "+14155550101", "+14155550199", None)
    assert medium("s4") == ("telnyx", "outgoing", "+14155550103", "+12125550100", None)
    assert medium("s6") == ("webRtc", None, None, None, None)
    assert medium("a3") == (
        "sip",
        "outgoing",
        "sip:alice@example.com",
        "sip:ultravox@pbx.example.com",
        "agent07",
    )
    assert bool(by_tag["a3"].sip_password_set) is True
    assert by_tag["s1"].sip_password_set is None
    assert [
        (t, by_tag[t].status, by_tag[t].call_id, by_tag[t].error) for t in ("s1", "s3", "a2")
    ] == [
        ("s1", "SUCCESS", CID[1], None),
        ("s3", "ERROR", None, BUSY),
        ("a2", "ERROR", CID[4], GEO),
    ]
    assert as_json(by_tag["a2"].metadata) == {"tag": "a2", "campaign": "autumn"}
    assert as_json(by_tag["s6"].metadata) == {"tag": "s6"}
    assert [t for t, r in sorted(by_tag.items()) if r.removed_at is not None] == ["s7"]
    assert {r.batch_id for r in found} == {SPRING, AUTUMN}
    assert all(r.agent_id == AGENT_ID for r in found)
    # The SIP password is nowhere in the view.
    assert "s3cr3t" not in repr([tuple(r) for r in found])


# -- the README's example queries ------------------------------------------------------------

_BLOCK = re.compile(r"```sql\n(.*?)```", re.DOTALL)
_TITLE = re.compile(r"--\s*(?P<title>.*?)\s*(?:\[(?P<only>PostgreSQL|SQLite|MariaDB/MySQL)\])?\s*$")
_BACKEND_OF_LABEL = {"PostgreSQL": "postgresql", "SQLite": "sqlite", "MariaDB/MySQL": "mysql"}


def readme_queries() -> list[tuple[str, str | None, str]]:
    """(title, backend it is for or None for all, SQL) of each block in Example queries."""
    readme = README.read_text(encoding="utf-8")
    start = readme.index("### Example queries")
    end = readme.index("\n## ", start)
    queries = []
    for block in _BLOCK.findall(readme[start:end]):
        first, _, sql = block.partition("\n")
        match = _TITLE.fullmatch(first)
        assert match is not None, f"an example query must start with '-- title': {first!r}"
        only = _BACKEND_OF_LABEL.get(match["only"] or "")
        queries.append((match["title"], only, sql.strip().rstrip(";")))
    return queries


def seconds_to_success(engine: Engine) -> list[tuple[Any, ...]]:
    """The expected rows of the time-to-SUCCESS query, from the typed columns."""
    h, c = scheduled_call_status_changes.c, scheduled_calls.c
    found = fetch(
        engine,
        select(c.batch_id, c.call_id, h.from_status, h.observed_at, c.first_seen_at)
        .join_from(scheduled_calls, scheduled_call_status_changes, h.scheduled_call_id == c.id)
        .where(h.to_status == "SUCCESS")
        .order_by(c.call_id),
    )
    return [
        (
            r.batch_id,
            r.call_id,
            r.from_status,
            r.observed_at,
            (r.observed_at - r.first_seen_at).total_seconds(),
        )
        for r in found
    ]


def outcomes(fake: FakeUltravox) -> dict[str, list[tuple[Any, ...]]]:
    """The expected rows of the outcome queries, from what the API holds."""
    how, ends, cost = [], [], []
    for batch_id in (SPRING, AUTUMN):
        calls_ = fake.created_calls(batch_id)
        scheduled = fake.batches[batch_id].calls
        billed = [float(c["billedDuration"][:-1]) for c in calls_ if c["billedDuration"]]
        placed = sum(1 for c in scheduled if c["callId"])
        answered = sum(1 for c in calls_ if c["joined"])
        how.append(
            (
                batch_id,
                len(scheduled),
                placed,
                answered,
                round(answered / placed, 2) if placed else None,
                round(sum(billed) / len(billed) / 60, 2) if billed else None,
            )
        )
        reasons = Counter(c["endReason"] for c in calls_ if c["endReason"])
        ends += [(batch_id, reason, n) for reason, n in sorted(reasons.items())]
        paid = [
            float(c["billedDuration"][:-1])
            for c in calls_
            if c["billingStatus"] == "BILLING_STATUS_BILLED"
        ]
        if paid:
            minutes = sum(paid) / 60
            cost.append((batch_id, len(paid), round(minutes, 2), round(minutes * 0.05, 2)))
    return {
        "How each batch went (view scheduled_call_outcomes)": how,
        "Why calls ended, per batch": ends,
        "Cost per batch at 0.05 a billed minute": cost,
    }


def expected_results(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    to_success = seconds_to_success(engine)
    # cid1 and cid2 succeeded in run 2 (a positive wait); cid3 was first seen as SUCCESS.
    assert [(r[0], r[1], r[2]) for r in to_success] == [
        (SPRING, CID[1], "FUTURE"),
        (SPRING, CID[2], "PENDING"),
        (AUTUMN, CID[3], None),
    ]
    assert to_success[0][4] > 0 and to_success[1][4] > 0 and to_success[2][4] == 0
    by_campaign = [
        ("autumn", "ERROR", 1),
        ("autumn", "EXPIRED", 1),
        ("autumn", "FUTURE", 1),
        ("autumn", "SUCCESS", 1),
        ("spring", "ERROR", 1),
        ("spring", "EXPIRED", 1),
        ("spring", "SUCCESS", 2),
    ]
    return {
        "Calls per status per batch": [
            (SPRING, "ERROR", 1),
            (SPRING, "EXPIRED", 1),
            (SPRING, "FUTURE", 1),
            (SPRING, "PENDING", 1),
            (SPRING, "SUCCESS", 2),
            (AUTUMN, "ERROR", 1),
            (AUTUMN, "EXPIRED", 1),
            (AUTUMN, "SUCCESS", 1),
        ],
        "Progress of each batch (view batch_progress)": [
            (SPRING, AGENT_ID, False, 6, 6, 1, 1, 2, 1, 1, 0.67),
            (AUTUMN, AGENT_ID, True, 3, 3, 0, 0, 1, 1, 1, 1.0),
            (EMPTY, OTHER_AGENT, False, 0, 0, 0, 0, 0, 0, 0, None),
        ],
        "Failures with their error text and destination": [
            (SPRING, "+14155550101", BUSY),
            (AUTUMN, "+14155550105", GEO),
        ],
        "Time from first sighting to SUCCESS": [
            (b, cid, old, at, round(s, 3)) for b, cid, old, at, s in to_success
        ],
        "Calls per destination number (view scheduled_call_report)": [
            ("+14155550101", 3, 1),
            ("+14155550102", 2, 2),
            ("+14155550103", 1, 0),
            ("+14155550105", 1, 0),
            ("sip:alice@example.com", 1, 0),
        ],
        "Calls per campaign, from the metadata rows": by_campaign,
        "Calls per campaign, from the metadata JSON": by_campaign,
        # A batch's counts are its streams' added up: scheduled calls, then calls.
        "What the last runs did": [
            (2, "succeeded", SPRING, "succeeded", 6 + 2, 0 + 2, 4, 1, None, None),
            (2, "succeeded", AUTUMN, "skipped", 0, 0, 0, 0, None, SKIP_NOTE),
            (2, "succeeded", EMPTY, "succeeded", 0, 0, 0, 0, None, None),
            (1, "succeeded", SPRING, "succeeded", 7, 7, 0, 0, None, None),
            (1, "succeeded", AUTUMN, "succeeded", 3 + 2, 3 + 2, 0, 0, None, None),
            (1, "succeeded", EMPTY, "succeeded", 0, 0, 0, 0, None, None),
        ],
    }


def test_readme_example_queries_return_the_expected_rows(
    data_set: Engine, fake_api: FakeUltravox
) -> None:
    engine = data_set
    expected = expected_results(engine) | outcomes(fake_api)
    assert all(expected.values()), "every query has rows to check"
    queries = readme_queries()
    titles = {title for title, _, _ in queries}
    assert titles == set(expected), "README example queries and their expectations differ"
    # A query spelled per database comes in one spelling for each.
    for title in titles:
        variants = sorted(str(only) for t, only, _ in queries if t == title)
        assert variants in (["None"], sorted(_BACKEND_OF_LABEL.values())), (title, variants)

    ran = []
    backend = backend_for(engine).name
    for title, only, sql in queries:
        if only not in (None, backend):
            continue
        got = plain_rows(rows(engine, sql))
        want = plain_rows(expected[title])
        if title == "Time from first sighting to SUCCESS":
            # SQLite's julianday() keeps milliseconds only.
            assert [r[:4] for r in got] == [r[:4] for r in want], title
            assert [r[4] for r in got] == pytest.approx([r[4] for r in want], abs=0.002), title
        else:
            assert got == want, title
        ran.append(title)
    assert sorted(ran) == sorted(titles)
