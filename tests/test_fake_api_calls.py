"""The fake API's created_calls over real HTTP: Calls follow their scheduled calls, page like
them, end realistically, get billed one step after they are created, carry secrets, and can
be made by hand or deleted."""

from __future__ import annotations

import re
import uuid
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import pytest
import requests

from etl.fake_api import (
    END_REASONS,
    SECRET_MARK,
    FakeBatch,
    FakeUltravox,
    call_secrets,
    generate_calls,
)
from tests.conftest import AGENT_ID
from tests.test_fake_api import walk

BATCH = "44444444-4444-4444-8444-444444444444"
CREATED = "2025-05-01T09:00:00.000000Z"  # fixed, so the calls' timestamps repeat too
DURATION = re.compile(r"^[0-9]+(\.[0-9]{3})?s$")
# What a Call shows from its creation on; the rest arrives with its billing.
KNOWN_AT_CREATION = ("callId", "created", "joined", "medium", "metadata", "joinUrl", "callbacks")


def created_url(fake: FakeUltravox, batch_id: str = BATCH) -> str:
    return f"{fake.base_url}/api/agents/{AGENT_ID}/scheduled_batches/{batch_id}/created_calls"


def add(fake: FakeUltravox, calls: list[dict[str, Any]]) -> FakeBatch:
    return fake.add_batch(AGENT_ID, BATCH, calls, created=CREATED)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


# -- which calls, in what pages ----------------------------------------------------------------


def test_each_scheduled_call_with_a_call_id_has_its_call(
    fake_api: FakeUltravox, api_session: requests.Session
) -> None:
    batch = add(fake_api, generate_calls(BATCH, 200, seed=1))
    scheduled = [c for c in batch.calls if c["callId"]]
    assert {c["status"] for c in scheduled} == {"SUCCESS", "ERROR"}

    calls = walk(api_session, created_url(fake_api), pageSize=1000)
    assert [c["callId"] for c in calls] == [c["callId"] for c in scheduled]
    for call, origin in zip(calls, scheduled, strict=True):
        assert call["medium"] == (origin.get("medium") or {"webRtc": {}})
        assert call["metadata"] == (origin["metadata"] or {})
        assert call["experimentalSettings"] == origin.get("experimentalSettings")
        assert call["agentId"] == call["agent"]["agentId"] == AGENT_ID
        assert (call["maxDuration"], call["model"]) == ("3600s", "ultravox-v0.7")
    # The medium keeps the SIP password: a secret the loader must drop, not the fake.
    assert any("password" in c["medium"].get("sip", {}).get("outgoing", {}) for c in calls)


def test_created_calls_paginate_like_scheduled_calls(
    fake_api: FakeUltravox, api_session: requests.Session
) -> None:
    add(fake_api, generate_calls(BATCH, 95))
    url = created_url(fake_api)
    first = api_session.get(url, params={"pageSize": 7}, timeout=5).json()
    assert list(first) == ["results", "next", "previous", "total"]
    assert first["total"] == len(fake_api.created_calls(BATCH)) > 14
    assert first["previous"] is None
    assert first["next"].startswith(url + "?")
    second = api_session.get(first["next"], timeout=5).json()
    assert second["previous"].startswith(fake_api.base_url)
    assert api_session.get(second["previous"], timeout=5).json()["results"] == first["results"]
    assert walk(api_session, url, pageSize=7) == fake_api.created_calls(BATCH)

    assert api_session.get(url, params={"cursor": "!!!"}, timeout=5).status_code == 404
    other_agents = url.replace(AGENT_ID, str(uuid.uuid4()))
    assert api_session.get(other_agents, timeout=5).status_code == 404
    empty = fake_api.add_batch(AGENT_ID, calls=[])
    page = api_session.get(created_url(fake_api, empty.batch_id), timeout=5).json()
    assert page == {"results": [], "next": None, "previous": None, "total": 0}


# -- billing ---------------------------------------------------------------------------------


def test_billing_and_summaries_arrive_one_step_after_the_call_is_created(
    fake_api: FakeUltravox, api_session: requests.Session
) -> None:
    future = [
        {**c, "status": "FUTURE", "callId": None, "error": None} for c in generate_calls(BATCH, 60)
    ]
    add(fake_api, future)
    url = created_url(fake_api)
    fake_api.advance(BATCH, 1.0, seed=1)  # FUTURE -> PENDING: nothing created yet
    assert walk(api_session, url) == []

    fake_api.advance(BATCH, 1.0, seed=2)  # PENDING -> SUCCESS or ERROR: calls created
    created = walk(api_session, url)
    assert len(created) > 30
    for call in created:
        assert call["billingStatus"] == "BILLING_STATUS_PENDING"
        assert call["billedDuration"] is None
        assert call["shortSummary"] is None and call["summary"] is None
        assert call["ended"] is None and call["endReason"] is None
        assert call["billedSideInputTokens"] is None

    assert fake_api.advance(BATCH, 0.0, seed=3) == 0  # nothing moves, but time passes
    billed = walk(api_session, url)
    assert [c["callId"] for c in billed] == [c["callId"] for c in created]
    for before, after in zip(created, billed, strict=True):
        assert after["billingStatus"] != "BILLING_STATUS_PENDING"
        assert DURATION.match(after["billedDuration"])
        assert after["endReason"] in END_REASONS
        assert at(after["ended"]) > at(after["created"])
        assert (after["summary"] is None) == (after["joined"] is None)
        assert (after["shortSummary"] is None) == (after["joined"] is None)
        assert {k: after[k] for k in KNOWN_AT_CREATION} == {k: before[k] for k in KNOWN_AT_CREATION}
    assert any(c["summary"] for c in billed)


def test_finish_billing_and_calls_created_by_set_call(
    fake_api: FakeUltravox, api_session: requests.Session
) -> None:
    add(fake_api, generate_calls(BATCH, 20))
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    fake_api.set_call(BATCH, 2, status="SUCCESS", call_id=first)  # slot 2 is FUTURE
    fake_api.set_call(BATCH, 5, status="ERROR", call_id=second, error="SIP 486 Busy Here")

    def billing() -> dict[str, str]:
        calls = walk(api_session, created_url(fake_api))
        return {c["callId"]: c["billingStatus"] for c in calls}

    pending = {k for k, v in billing().items() if v == "BILLING_STATUS_PENDING"}
    assert pending == {first, second}  # the generated calls were created before: billed
    fake_api.set_call(BATCH, 2, status="SUCCESS", call_id=first)  # the same call: no news
    assert fake_api.finish_billing(BATCH, first) == 1
    assert billing()[first] != "BILLING_STATUS_PENDING"
    assert billing()[second] == "BILLING_STATUS_PENDING"
    with pytest.raises(KeyError):
        fake_api.finish_billing(BATCH, first)
    assert fake_api.finish_billing(BATCH) == 1
    assert "BILLING_STATUS_PENDING" not in billing().values()


# -- outcomes --------------------------------------------------------------------------------


def test_outcomes_are_realistic(fake_api: FakeUltravox, api_session: requests.Session) -> None:
    batch = add(fake_api, generate_calls(BATCH, 1000, seed=5))
    status_of = {c["callId"]: c["status"] for c in batch.calls if c["callId"]}
    calls = walk(api_session, created_url(fake_api), pageSize=1000)

    assert Counter(c["endReason"] for c in calls).keys() == set(END_REASONS)
    assert {c["billingStatus"] for c in calls} == {
        "BILLING_STATUS_BILLED",
        "BILLING_STATUS_FREE_MINUTES",
        "BILLING_STATUS_REFUNDED",
        "BILLING_STATUS_FREE_ZERO_EFFECTIVE_DURATION",
        "BILLING_STATUS_FREE_SYSTEM_ERROR",
    }
    for call in calls:
        reason, joined = call["endReason"], call["joined"]
        created, ended = at(call["created"]), at(call["ended"])
        assert created > at(CREATED)
        assert (joined is None) == (reason == "unjoined")
        if joined is None:
            assert ended - created == timedelta(seconds=30)  # the joinTimeout
            assert call["billingStatus"] == "BILLING_STATUS_FREE_ZERO_EFFECTIVE_DURATION"
            assert call["billedDuration"] == "0s"
            assert call["billedSideInputTokens"] == call["billedSideOutputTokens"] == 0
        else:
            assert created < at(joined) < ended
            assert call["billedSideInputTokens"] > 0 and call["billedSideOutputTokens"] > 0
        if reason == "timeout":
            assert ended - at(joined) == timedelta(seconds=3600)  # the maxDuration
        if reason == "system_error":
            assert call["billingStatus"] == "BILLING_STATUS_FREE_SYSTEM_ERROR"
        if status_of[call["callId"]] == "ERROR":
            assert reason in ("unjoined", "connection_error", "system_error")
        sip = call["sipDetails"]
        if "sip" in call["medium"]:
            assert re.fullmatch(r"[0-9]+s", sip["billedDuration"])
            assert sip["terminationReason"].startswith("SIP_TERMINATION_")
        else:
            assert sip == {"billedDuration": None, "terminationReason": None}
        outgoing = any("outgoing" in v for v in call["medium"].values())
        assert call["firstSpeaker"] == ("FIRST_SPEAKER_USER" if outgoing else "FIRST_SPEAKER_AGENT")
        assert all(isinstance(v, str) for v in call["metadata"].values())


def test_outcomes_repeat_for_the_same_batch(
    fake_api: FakeUltravox, api_session: requests.Session
) -> None:
    add(fake_api, generate_calls(BATCH, 100, seed=2))
    served = walk(api_session, created_url(fake_api), pageSize=1000)
    again = FakeUltravox()
    again.add_batch(AGENT_ID, BATCH, generate_calls(BATCH, 100, seed=2), created=CREATED)
    assert again.created_calls(BATCH) == served
    # Timestamps count from the batch's creation; the outcome does not depend on it.
    a_day_later = "2025-05-02T09:00:00.000000Z"
    later = FakeUltravox()
    later.add_batch(AGENT_ID, BATCH, generate_calls(BATCH, 100, seed=2), created=a_day_later)
    moved = later.created_calls(BATCH)
    assert [c["endReason"] for c in moved] == [c["endReason"] for c in served]
    for call, earlier in zip(moved, served, strict=True):
        assert at(call["created"]) - at(earlier["created"]) == timedelta(days=1)


# -- secrets ---------------------------------------------------------------------------------


def test_each_call_carries_recognisable_secrets(
    fake_api: FakeUltravox, api_session: requests.Session
) -> None:
    add(fake_api, generate_calls(BATCH, 200, seed=3))
    calls = walk(api_session, created_url(fake_api), pageSize=1000)
    tokens = set()
    for call in calls:
        secrets = call_secrets(call)
        password = call["medium"].get("sip", {}).get("outgoing", {}).get("password")
        made_up = [s for s in secrets if s != password]
        # Three callbacks, the data connection's header and a join URL, but SIP outgoing
        # calls are dialled by Ultravox: no join URL, the SIP password instead.
        assert len(made_up) == (4 if password else 5)
        assert all(SECRET_MARK in s for s in made_up)
        if password:
            assert call["joinUrl"] is None
        else:
            assert f"?token={SECRET_MARK}" in call["joinUrl"]
        tokens.add(call["dataConnectionConfig"]["headers"]["Authorization"])
    assert len(tokens) == len(calls)  # each call its own
    assert any("password" in c["medium"].get("sip", {}).get("outgoing", {}) for c in calls)
    assert call_secrets({"callId": "x", "callbacks": None, "medium": {"sip": {}}}) == []


# -- hand-made and deleted calls -----------------------------------------------------------------


def test_hand_made_calls_replace_a_generated_one_or_join_the_listing(
    fake_api: FakeUltravox, api_session: requests.Session
) -> None:
    add(fake_api, generate_calls(BATCH, 20))
    generated = fake_api.created_calls(BATCH)
    fake_api.add_created_call(BATCH, {**generated[0], "summary": "hand-made"})
    extra = fake_api.add_created_call(BATCH, {**generated[1], "callId": str(uuid.uuid4())})
    raw_id = str(uuid.uuid4())
    raw = b'{"callId":"%s","billedSideInputTokens":1e400,"x":1,"x":2}' % raw_id.encode()
    assert fake_api.add_created_call(BATCH, raw) == raw_id  # the id read from the text
    unreadable = str(uuid.uuid4())
    fake_api.add_created_call(BATCH, b'{"callId": ', call_id=unreadable)

    listed = [c["callId"] for c in fake_api.created_calls(BATCH)]
    assert listed == [c["callId"] for c in generated] + [extra, raw_id, unreadable]
    response = api_session.get(created_url(fake_api), params={"pageSize": 1000}, timeout=5)
    assert response.content.endswith(
        b"," + raw + b',{"callId": ],"next":null,"previous":null,"total":%d}' % len(listed)
    )
    assert b'"summary":"hand-made"' in response.content
    with pytest.raises(ValueError, match="no callId"):
        fake_api.add_created_call(BATCH, {"summary": "whose?"})


def test_a_deleted_call_vanishes_from_the_listing(
    fake_api: FakeUltravox, api_session: requests.Session
) -> None:
    batch = add(fake_api, generate_calls(BATCH, 40))
    url = created_url(fake_api)
    before = walk(api_session, url)
    victim = before[1]

    fake_api.remove_created_call(BATCH, victim["callId"])
    page = api_session.get(url, params={"pageSize": 1000}, timeout=5).json()
    assert page["total"] == len(before) - 1
    assert page["results"] == before[:1] + before[2:]
    assert victim["callId"] in [c["callId"] for c in batch.calls]  # the scheduled call keeps it
    with pytest.raises(KeyError):
        fake_api.remove_created_call(BATCH, victim["callId"])
    fake_api.advance(BATCH, 1.0)  # time passes; deleted stays deleted
    assert victim["callId"] not in [c["callId"] for c in walk(api_session, url)]

    fake_api.add_created_call(BATCH, victim)
    assert victim in walk(api_session, url)
