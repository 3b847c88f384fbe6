"""The fake Ultravox API, exercised over real HTTP with `requests`."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from etl.fake_api import (
    ALL_MEDIUM_KEYS,
    STATUSES,
    FakeUltravox,
    generate_calls,
    retry_after_date,
)

KEY = "test-key"
AGENT = "11111111-1111-4111-8111-111111111111"
OTHER_AGENT = "22222222-2222-4222-8222-222222222222"
BATCH = "33333333-3333-4333-8333-333333333333"
DTMF = {"ignore": False, "userTextMessage": {"text": "pressed {digits}", "urgency": "URGENCY_SOON"}}


@pytest.fixture
def fake() -> Iterator[FakeUltravox]:
    with FakeUltravox(KEY) as server:
        server.add_batch(AGENT, BATCH, generate_calls(BATCH, 95))
        yield server


@pytest.fixture
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.headers["X-API-Key"] = KEY
        yield s


def calls_url(fake: FakeUltravox, batch_id: str = BATCH, agent_id: str = AGENT) -> str:
    return f"{fake.base_url}/api/agents/{agent_id}/scheduled_batches/{batch_id}/scheduled_calls"


def walk(session: requests.Session, url: str, **params: Any) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    next_url: str | None = url
    first = True
    while next_url:
        response = session.get(next_url, params=params if first else None, timeout=5)
        response.raise_for_status()
        page = response.json()
        results.extend(page["results"])
        next_url = page["next"]
        first = False
    return results


# -- auth, routing -----------------------------------------------------------------------------


def test_missing_or_wrong_api_key_is_401(fake: FakeUltravox) -> None:
    for headers in ({}, {"X-API-Key": "wrong"}):
        response = requests.get(calls_url(fake), headers=headers, timeout=5)
        assert response.status_code == 401
        assert response.json() == {"detail": "Invalid API key."}
    fake.api_key = "rotated"
    assert requests.get(calls_url(fake), headers={"X-API-Key": KEY}, timeout=5).status_code == 401


def test_auth_is_checked_before_faults(fake: FakeUltravox, session: requests.Session) -> None:
    fake.inject(503)
    assert requests.get(calls_url(fake), timeout=5).status_code == 401
    assert session.get(calls_url(fake), timeout=5).status_code == 503
    assert session.get(calls_url(fake), timeout=5).status_code == 200


def test_unknown_batch_or_other_agents_batch_is_404(
    fake: FakeUltravox, session: requests.Session
) -> None:
    other = fake.add_batch(OTHER_AGENT)
    base = f"{fake.base_url}/api/agents/{AGENT}/scheduled_batches"
    for url in (
        f"{base}/{uuid.uuid4()}",
        f"{base}/{uuid.uuid4()}/scheduled_calls",
        f"{base}/{other.batch_id}",
        f"{base}/{other.batch_id}/scheduled_calls",
        f"{fake.base_url}/api/nothing-here",
    ):
        response = session.get(url, timeout=5)
        assert response.status_code == 404, url
        assert response.json() == {"detail": "Not found."}
    fake.remove_batch(BATCH)
    assert session.get(calls_url(fake), timeout=5).status_code == 404


def test_other_methods_are_405(fake: FakeUltravox, session: requests.Session) -> None:
    response = session.post(calls_url(fake), json={"x": 1}, timeout=5)
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET"
    # The body was consumed, so the kept-alive connection still serves the next request.
    assert session.get(calls_url(fake), timeout=5).status_code == 200


# -- batches -----------------------------------------------------------------------------------


def test_batch_object_follows_schema(fake: FakeUltravox, session: requests.Session) -> None:
    fake.set_call(BATCH, 0, status="FUTURE")
    fake.set_call(BATCH, 1, status="ERROR", error="SIP 486 Busy Here")
    url = f"{fake.base_url}/api/agents/{AGENT}/scheduled_batches/{BATCH}"
    response = session.get(url, timeout=5)
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert list(body) == [
        "batchId",
        "created",
        "windowStart",
        "windowEnd",
        "throttle",
        "webhookUrl",
        "webhookSecret",
        "paused",
        "totalCount",
        "completedCount",
        "endedAt",
    ]
    calls = fake.batches[BATCH].calls
    assert body["batchId"] == BATCH
    assert body["created"].endswith("Z")
    assert body["webhookSecret"]
    assert body["totalCount"] == 95
    assert body["completedCount"] == sum(c["status"] not in ("FUTURE", "PENDING") for c in calls)


def test_list_batches_of_one_agent_paginated(fake: FakeUltravox, session: requests.Session) -> None:
    ids = {BATCH} | {fake.add_batch(AGENT, calls=[]).batch_id for _ in range(4)}
    fake.add_batch(OTHER_AGENT)
    url = f"{fake.base_url}/api/agents/{AGENT}/scheduled_batches"
    first = session.get(url, params={"pageSize": 2}, timeout=5).json()
    assert first["total"] == 5
    assert len(first["results"]) == 2
    assert "calls" not in first["results"][0]
    assert {b["batchId"] for b in walk(session, url, pageSize=2)} == ids


# -- pagination --------------------------------------------------------------------------------


def test_pagination_walks_every_call_once_in_order(
    fake: FakeUltravox, session: requests.Session
) -> None:
    first = session.get(calls_url(fake), params={"pageSize": 10}, timeout=5).json()
    assert list(first) == ["results", "next", "previous", "total"]
    assert first["total"] == 95
    assert first["previous"] is None
    assert first["next"].startswith(calls_url(fake) + "?")
    assert parse_qs(urlsplit(first["next"]).query)["pageSize"] == ["10"]

    second = session.get(first["next"], timeout=5).json()
    assert second["previous"].startswith(fake.base_url)
    assert session.get(second["previous"], timeout=5).json()["results"] == first["results"]

    assert walk(session, calls_url(fake), pageSize=10) == fake.batches[BATCH].calls


def test_page_size_default_cap_and_junk() -> None:
    with FakeUltravox(KEY, default_page_size=7, max_page_size=20) as fake:
        fake.add_batch(AGENT, BATCH, generate_calls(BATCH, 30))
        headers = {"X-API-Key": KEY}
        for page_size, expected in [(None, 7), (3, 3), (1000, 20), ("abc", 7), (0, 7), (-5, 7)]:
            params = {} if page_size is None else {"pageSize": page_size}
            page = requests.get(calls_url(fake), params=params, headers=headers, timeout=5).json()
            assert len(page["results"]) == expected, page_size


def test_last_page_and_empty_batch(fake: FakeUltravox, session: requests.Session) -> None:
    page = session.get(calls_url(fake), params={"pageSize": 95}, timeout=5).json()
    assert len(page["results"]) == 95
    assert page["next"] is None
    empty = fake.add_batch(AGENT, calls=[])
    page = session.get(calls_url(fake, empty.batch_id), timeout=5).json()
    assert page == {"results": [], "next": None, "previous": None, "total": 0}


def test_status_filter_total_and_links(fake: FakeUltravox, session: requests.Session) -> None:
    calls = fake.batches[BATCH].calls
    for status in STATUSES:
        expected = [c for c in calls if c["status"] == status]
        page = session.get(calls_url(fake), params={"status": status, "pageSize": "3"}, timeout=5)
        assert page.json()["total"] == len(expected)
        if page.json()["next"]:
            assert parse_qs(urlsplit(page.json()["next"]).query)["status"] == [status]
        assert walk(session, calls_url(fake), status=status, pageSize=3) == expected


def test_invalid_status_is_400(fake: FakeUltravox, session: requests.Session) -> None:
    response = session.get(calls_url(fake), params={"status": "DONE"}, timeout=5)
    assert response.status_code == 400
    assert response.json() == {
        "status": ["Select a valid choice. DONE is not one of the available choices."]
    }


@pytest.mark.parametrize("cursor", ["!!!", "bm90LWFuLW9mZnNldA", "bz0tMQ==", "x"])
def test_invalid_cursor_is_404(fake: FakeUltravox, session: requests.Session, cursor: str) -> None:
    response = session.get(calls_url(fake), params={"cursor": cursor}, timeout=5)
    assert response.status_code == 404
    assert response.json() == {"detail": "Invalid cursor"}


def test_next_link_base_changes_the_links_host(
    fake: FakeUltravox, session: requests.Session
) -> None:
    fake.next_link_base = "http://evil.example:9999"
    page = session.get(calls_url(fake), params={"pageSize": 10}, timeout=5).json()
    assert page["next"].startswith("http://evil.example:9999/api/agents/")
    second = session.get(
        calls_url(fake), params={"pageSize": "10", "cursor": "bz0xMA=="}, timeout=5
    )
    assert second.json()["previous"].startswith("http://evil.example:9999/")


# -- faults ------------------------------------------------------------------------------------


def test_injected_429_with_retry_after_then_success(
    fake: FakeUltravox, session: requests.Session
) -> None:
    fake.inject(429, retry_after="2")
    response = session.get(calls_url(fake), timeout=5)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "2"
    assert "throttled" in response.json()["detail"]
    assert session.get(calls_url(fake), timeout=5).status_code == 200


def test_injected_faults_count_and_match_the_path(
    fake: FakeUltravox, session: requests.Session
) -> None:
    date = retry_after_date(1)
    fake.inject(503, times=2, path_contains="status=ERROR", retry_after=date)
    fake.inject(502, body=b"<html>Bad Gateway</html>")
    assert session.get(calls_url(fake), timeout=5).status_code == 502  # first matching fault
    response = session.get(calls_url(fake), params={"status": "ERROR"}, timeout=5)
    assert (response.status_code, response.headers["Retry-After"]) == (503, date)
    assert session.get(calls_url(fake), timeout=5).status_code == 200  # path does not match
    assert session.get(calls_url(fake), params={"status": "ERROR"}).status_code == 503
    assert session.get(calls_url(fake), params={"status": "ERROR"}).status_code == 200


def test_gateway_html_body(fake: FakeUltravox, session: requests.Session) -> None:
    fake.inject(504, body=b"<html>Gateway Timeout</html>")
    response = session.get(calls_url(fake), timeout=5)
    assert response.status_code == 504
    assert response.headers["Content-Type"].startswith("text/html")


def test_connection_reset(fake: FakeUltravox, session: requests.Session) -> None:
    fake.inject_connection_reset()
    with pytest.raises(requests.ConnectionError):
        session.get(calls_url(fake), timeout=5)
    assert session.get(calls_url(fake), timeout=5).status_code == 200


def test_truncated_body(fake: FakeUltravox, session: requests.Session) -> None:
    fake.inject_truncated_body()
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.ConnectionError)):
        session.get(calls_url(fake), timeout=5).json()
    assert session.get(calls_url(fake), timeout=5).status_code == 200


def test_invalid_json(fake: FakeUltravox, session: requests.Session) -> None:
    fake.inject_invalid_json()
    response = session.get(calls_url(fake), timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    with pytest.raises(requests.exceptions.JSONDecodeError):
        response.json()


def test_injected_payload(fake: FakeUltravox, session: requests.Session) -> None:
    fake.inject_payload({"results": "x"}, times=2)
    assert session.get(calls_url(fake), timeout=5).json() == {"results": "x"}
    assert session.get(calls_url(fake), timeout=5).json() == {"results": "x"}
    assert isinstance(session.get(calls_url(fake), timeout=5).json()["results"], list)


def test_latency_and_recorded_requests(fake: FakeUltravox, session: requests.Session) -> None:
    fake.latency_seconds = 0.05
    started = time.monotonic()
    session.get(calls_url(fake), params={"pageSize": "5", "status": "FUTURE"}, timeout=5)
    assert time.monotonic() - started >= 0.05
    recorded = fake.requests[-1]
    assert recorded.method == "GET"
    assert recorded.path.endswith("/scheduled_calls")
    assert recorded.query == {"pageSize": "5", "status": "FUTURE"}
    assert recorded.header("X-API-Key") == KEY
    assert recorded.headers["x-api-key"] == KEY
    assert started <= recorded.at <= time.monotonic()


# -- connections -------------------------------------------------------------------------------


def test_keep_alive_reuses_one_connection(fake: FakeUltravox, session: requests.Session) -> None:
    before = fake.connections_opened
    for _ in range(3):
        assert session.get(calls_url(fake), timeout=5).status_code == 200
    assert session.get(calls_url(fake), params={"status": "BAD"}, timeout=5).status_code == 400
    assert fake.connections_opened - before == 1


def test_stop_closes_kept_alive_connections(session: requests.Session) -> None:
    fake = FakeUltravox(KEY)
    fake.add_batch(AGENT, BATCH)
    fake.start()
    assert session.get(calls_url(fake), timeout=5).status_code == 200
    fake.stop()
    with pytest.raises(requests.ConnectionError):
        session.get(calls_url(fake), timeout=5)


# -- generated data ----------------------------------------------------------------------------


def test_generate_calls_covers_every_shape() -> None:
    calls = generate_calls(BATCH, 20)
    assert len(calls) == 20
    medium_keys = Counter(
        "<absent>"
        if "medium" not in c
        else "<null>"
        if c["medium"] is None
        else next(iter(c["medium"]))
        for c in calls
    )
    assert set(ALL_MEDIUM_KEYS) <= set(medium_keys)
    # The schema lets a medium be absent but not null: null only comes with off_spec.
    assert "<absent>" in medium_keys
    assert "<null>" not in medium_keys
    assert set(medium_keys) - set(ALL_MEDIUM_KEYS) - {"<absent>"}  # unknown medium
    media = [c.get("medium") or {} for c in calls]
    assert {"webRtc": {}} in media
    assert {"exotel": {}} in media
    assert {"sip": {"incoming": {}}} in media
    assert {"telnyx": {"dtmfHandling": DTMF}} in media  # an inbound telephony medium
    assert any("dtmfHandling" in m.get("twilio", {}) for m in media)
    assert any("dtmfHandling" in m.get("exotel", {}) for m in media)
    assert any("machineDetection" in m.get("twilio", {}).get("outgoing", {}) for m in media)
    assert any("<" in m.get("plivo", {}).get("outgoing", {}).get("to", "") for m in media)
    assert any("userStartedSpeaking" in m.get("webRtc", {}).get("dataMessages", {}) for m in media)
    assert any(m.get("serverWebSocket", {}).get("mediaIdleTimeout") == "30s" for m in media)
    assert any(m.get("sip", {}).get("outgoing", {}).get("password") for m in media)

    assert {c["status"] for c in calls} == set(STATUSES)
    for field in ("metadata", "templateContext"):
        assert None in [c[field] for c in calls]
        assert {} in [c[field] for c in calls]
    assert any("名前" in (c["metadata"] or {}) for c in calls)
    assert any(len(v) > 255 for c in calls for v in (c["metadata"] or {}).values())
    assert any(isinstance(c["templateContext"], dict) and c["templateContext"] for c in calls)
    assert any("experimentalSettings" not in c for c in calls)
    assert any(c.get("experimentalSettings") for c in calls)

    encoded = [json.dumps(c, sort_keys=False) for c in calls]
    repeats = [n for n in Counter(encoded).values() if n > 1]
    assert repeats and max(repeats) >= 3
    for call in calls:
        assert list(call)[:4] == ["status", "batchId", "callId", "error"]
        assert call["batchId"] == BATCH


def test_generate_calls_off_spec_only_turns_some_media_into_null() -> None:
    faithful = generate_calls(BATCH, 60)
    off_spec = generate_calls(BATCH, 60, off_spec=True)
    changed = [i for i, (a, b) in enumerate(zip(faithful, off_spec, strict=True)) if a != b]
    assert len(changed) >= 3  # at least one per block of 20
    for i in changed:
        assert off_spec[i]["medium"] is None
        assert faithful[i]["medium"] == {"telnyx": {"dtmfHandling": DTMF}}
        assert {**off_spec[i], "medium": "x"} == {**faithful[i], "medium": "x"}


def test_generate_calls_statuses_are_consistent() -> None:
    for call in generate_calls(BATCH, 400, seed=3):
        status, call_id, error = call["status"], call["callId"], call["error"]
        if status in ("FUTURE", "PENDING", "EXPIRED"):
            assert call_id is None and error is None
        elif status == "SUCCESS":
            assert uuid.UUID(call_id) and error is None
        else:
            assert status == "ERROR" and error


def test_generate_calls_is_deterministic() -> None:
    assert generate_calls(BATCH, 60) == generate_calls(BATCH, 60)
    assert generate_calls(BATCH, 60) != generate_calls(BATCH, 60, seed=1)
    assert generate_calls(BATCH, 60)[:20] == generate_calls(BATCH, 20)


def test_default_batch_has_25_generated_calls(fake: FakeUltravox) -> None:
    batch = fake.add_batch(AGENT)
    uuid.UUID(batch.batch_id)
    assert batch.calls == generate_calls(batch.batch_id, 25)


# -- mutations ---------------------------------------------------------------------------------


def test_advance_moves_calls_along(fake: FakeUltravox, session: requests.Session) -> None:
    batch = fake.add_batch(AGENT, calls=generate_calls("fresh", 200))
    for i in range(len(batch.calls)):
        fake.set_call(batch.batch_id, i, status="FUTURE")
    assert fake.advance(batch.batch_id, 0.5, seed=7) == 100
    movable = sum(c["status"] in ("FUTURE", "PENDING") for c in batch.calls)
    assert movable == 200 - Counter(c["status"] for c in batch.calls)["EXPIRED"]
    assert fake.advance(batch.batch_id, 1.0, seed=7) == movable
    statuses = Counter(c["status"] for c in batch.calls)
    assert statuses["SUCCESS"] > 0 and statuses["FUTURE"] == 0
    for call in batch.calls:
        if call["status"] == "SUCCESS":
            uuid.UUID(call["callId"])
    while fake.advance(batch.batch_id, 1.0):
        pass
    assert batch.ended_at is not None
    assert {c["status"] for c in batch.calls} <= {"SUCCESS", "ERROR", "EXPIRED"}
    url = f"{fake.base_url}/api/agents/{AGENT}/scheduled_batches/{batch.batch_id}"
    assert session.get(url, timeout=5).json()["completedCount"] == 200


def test_advance_is_deterministic() -> None:
    results = []
    for _ in range(2):
        fake = FakeUltravox()
        batch = fake.add_batch(AGENT, BATCH, generate_calls(BATCH, 100))
        fake.advance(BATCH, 0.3, seed=5)
        results.append(batch.calls)
    assert results[0] == results[1]


def test_set_call(fake: FakeUltravox, session: requests.Session) -> None:
    call_id = str(uuid.uuid4())
    fake.set_call(BATCH, 4, status="SUCCESS", call_id=call_id)
    page = session.get(calls_url(fake), params={"pageSize": 5}, timeout=5).json()
    assert (page["results"][4]["status"], page["results"][4]["callId"]) == ("SUCCESS", call_id)
    with pytest.raises(ValueError):
        fake.set_call(BATCH, 0, status="DONE")
