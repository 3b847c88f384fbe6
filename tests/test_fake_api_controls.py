"""Steering the fake API: listing order, calls dropped mid-listing, records served byte for
byte, the /_fake/ control endpoints, and the command that serves and steers it."""

from __future__ import annotations

import argparse
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import requests

from etl.config import load_config
from etl.fake_api import (
    STATUSES,
    FakeBatch,
    FakeUltravox,
    add_arguments,
    add_generated_batches,
    build_parser,
    generate_calls,
    main,
    run,
)
from tests.conftest import AGENT_ID, TEST_API_KEY
from tests.test_fake_api import walk

BATCH = "55555555-5555-4555-8555-555555555555"
OTHER = "66666666-6666-4666-8666-666666666666"


def listing_url(fake: FakeUltravox, listing: str, batch_id: str = BATCH) -> str:
    return f"{fake.base_url}/api/agents/{AGENT_ID}/scheduled_batches/{batch_id}/{listing}"


def compact(record: Mapping[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()


def control(fake: FakeUltravox, action: str, body: Any = None) -> requests.Response:
    """A control request as anyone outside the process sends it: no API key."""
    url = f"{fake.base_url}/_fake/{action}"
    if body is None:
        return requests.get(url, timeout=10)
    return requests.post(url, json=body, timeout=10)


# -- listing order ---------------------------------------------------------------------------


def test_listings_can_be_served_reversed_or_shuffled(
    fake_api: FakeUltravox, api_session: requests.Session
) -> None:
    batch = fake_api.add_batch(AGENT_ID, BATCH, generate_calls(BATCH, 60))
    stored, created = list(batch.calls), fake_api.created_calls(BATCH)
    scheduled_url, created_url = (
        listing_url(fake_api, n) for n in ("scheduled_calls", "created_calls")
    )

    fake_api.set_order(BATCH, "reversed")
    assert walk(api_session, scheduled_url, pageSize=7) == stored[::-1]
    assert walk(api_session, created_url, pageSize=7) == created[::-1]
    successes = walk(api_session, scheduled_url, status="SUCCESS", pageSize=7)
    assert successes == [c for c in stored[::-1] if c["status"] == "SUCCESS"]

    fake_api.set_order(BATCH, "shuffled", seed=1)
    shuffled = walk(api_session, scheduled_url, pageSize=7)
    assert shuffled != stored
    assert sorted(map(compact, shuffled)) == sorted(map(compact, stored))
    assert walk(api_session, scheduled_url, pageSize=13) == shuffled  # one order, any page size
    shuffled_created = walk(api_session, created_url, pageSize=7)
    assert shuffled_created != created
    assert sorted(map(compact, shuffled_created)) == sorted(map(compact, created))
    fake_api.set_order(BATCH, "shuffled", seed=2)
    assert walk(api_session, scheduled_url, pageSize=7) != shuffled

    fake_api.set_order(BATCH, "stored")
    assert walk(api_session, scheduled_url, pageSize=7) == stored
    unknown: Any = "by-phone-number"
    with pytest.raises(ValueError, match="unknown order"):
        fake_api.set_order(BATCH, unknown)


def test_the_created_calls_listing_follows_every_change_to_the_batchs_calls(
    fake_api: FakeUltravox, api_session: requests.Session
) -> None:
    batch = fake_api.add_batch(AGENT_ID, BATCH, generate_calls(BATCH, 40))
    url = listing_url(fake_api, "created_calls")

    def listed() -> list[str]:
        return [c["callId"] for c in walk(api_session, url, pageSize=9)]

    def expected() -> list[str]:
        ids = [c["callId"] for c in batch.calls if c.get("callId")]
        return list(dict.fromkeys(ids))

    assert listed() == expected() and listed()  # listed twice: the second from what was derived
    first = batch.calls.pop(0)  # slot 0 is always SUCCESS
    assert first["callId"] not in listed()
    batch.calls[1] = {**batch.calls[1], "status": "SUCCESS", "callId": "new-call-1"}
    batch.calls.append({**batch.calls[2], "status": "SUCCESS", "callId": "new-call-2"})
    batch.calls.insert(0, first)
    del batch.calls[-1]
    assert listed() == expected()
    assert "new-call-1" in listed() and "new-call-2" not in listed()
    batch.calls = [c for c in batch.calls if c.get("callId") != "new-call-1"]  # a plain list
    batch.calls.append({**batch.calls[2], "status": "SUCCESS", "callId": "new-call-3"})
    assert listed() == expected() == listed()
    fake_api.advance_batches(0.5)
    assert listed() == expected()


def test_a_call_dropped_mid_listing_moves_the_rest_up(
    fake_api: FakeUltravox, api_session: requests.Session
) -> None:
    batch = fake_api.add_batch(AGENT_ID, BATCH, generate_calls(BATCH, 30))
    stored = list(batch.calls)
    url = listing_url(fake_api, "scheduled_calls")
    first = api_session.get(url, params={"pageSize": 10}, timeout=5).json()
    assert first["results"] == stored[:10]

    fake_api.drop_call(BATCH, 4)  # a call already served
    second = api_session.get(first["next"], timeout=5).json()
    assert second["total"] == 29
    assert second["results"] == stored[11:21]  # stored[10] moved onto the first page: unseen

    call_id = stored[0]["callId"]  # slot 0 is always SUCCESS
    assert call_id in [c["callId"] for c in fake_api.created_calls(BATCH)]
    fake_api.drop_call(BATCH, 0)
    assert call_id not in [c["callId"] for c in fake_api.created_calls(BATCH)]
    with pytest.raises(IndexError):
        fake_api.drop_call(BATCH, 28)


# -- records byte for byte ---------------------------------------------------------------------

# Spaced as Python's compact JSON never is, so a re-encoded record cannot pass for the raw one.
_HEAD = (
    b'{"status": "FUTURE", "batchId": "' + BATCH.encode() + b'", "callId": null, "error": null, '
)
# name -> (the raw record, the status the fake files it under; None: the replaced call's)
RAW_RECORDS: dict[str, tuple[bytes, str | None]] = {
    "1e400": (_HEAD + b'"metadata":{"x":"1"},"templateContext":{"x":1e400}}', "FUTURE"),
    "NaN": (_HEAD + b'"templateContext":{"ratio":NaN,"low":-Infinity}}', "FUTURE"),
    "beyond 64 bits": (
        _HEAD + b'"templateContext":{"n":123456789012345678901234567890}}',
        "FUTURE",
    ),
    "2,000 levels": (_HEAD + b'"templateContext":' + b"[" * 2000 + b"]" * 2000 + b"}", None),
    "duplicate keys": (_HEAD + b'"status":"EXPIRED","metadata":{"a":"1","a":"2"}}', "EXPIRED"),
}


@pytest.mark.parametrize(("raw", "filed_under"), RAW_RECORDS.values(), ids=RAW_RECORDS)
def test_a_raw_record_is_served_byte_for_byte(
    fake_api: FakeUltravox, api_session: requests.Session, raw: bytes, filed_under: str | None
) -> None:
    batch = fake_api.add_batch(AGENT_ID, BATCH, generate_calls(BATCH, 30))
    expected = [compact(c) for c in batch.calls[10:20]]
    replaced_status = batch.calls[12]["status"]
    fake_api.set_raw_record(BATCH, 12, raw)
    expected[2] = raw
    url = listing_url(fake_api, "scheduled_calls")

    first = api_session.get(url, params={"pageSize": 10}, timeout=5).json()
    body = api_session.get(first["next"], timeout=5).content
    assert body.startswith(b'{"results":[' + b",".join(expected) + b'],"next":"http://')
    assert body.endswith(b',"total":30}')
    status = filed_under or replaced_status
    filtered = api_session.get(url, params={"status": status, "pageSize": 100}, timeout=5)
    assert raw in filtered.content

    fake_api.set_call(BATCH, 12, status="PENDING")  # a change through the fake: plain JSON again
    assert raw not in api_session.get(first["next"], timeout=5).content


# -- control endpoints -------------------------------------------------------------------------


def two_future_batches(fake: FakeUltravox) -> list[FakeBatch]:
    def future(batch_id: str) -> list[dict[str, Any]]:
        calls = generate_calls(batch_id, 40)
        return [{**c, "status": "FUTURE", "callId": None, "error": None} for c in calls]

    return [fake.add_batch(AGENT_ID, b, future(b)) for b in (BATCH, OTHER)]


def test_advance_over_http_takes_the_steps_advance_batches_takes(fake_api: FakeUltravox) -> None:
    batches = two_future_batches(fake_api)
    twin = FakeUltravox()
    twins = two_future_batches(twin)

    answer = control(fake_api, "advance", {"fraction": 0.5})
    assert answer.status_code == 200
    assert answer.json() == {"changed": {BATCH: 20, OTHER: 20}}
    assert twin.advance_batches(0.5) == answer.json()["changed"]
    answer = control(fake_api, "advance", {"fraction": 1.0, "batch": OTHER, "seed": 7})
    assert answer.json() == {"changed": {OTHER: twin.advance(OTHER, 1.0, seed=7)}}
    assert [b.calls for b in batches] == [b.calls for b in twins]
    assert fake_api.describe() == twin.describe()
    assert fake_api.requests == []  # steering is not API traffic


def test_vanish_drops_calls_a_created_call_or_the_batch(
    fake_api: FakeUltravox, api_session: requests.Session
) -> None:
    batch = fake_api.add_batch(AGENT_ID, BATCH, generate_calls(BATCH, 40))
    stored = list(batch.calls)
    answer = control(fake_api, "vanish", {"batch": BATCH, "calls": 3})
    assert answer.json() == {"vanished": {"batch": BATCH, "calls": 3}}
    assert batch.calls == stored[:19] + stored[22:]  # from the middle

    call_id = fake_api.created_calls(BATCH)[0]["callId"]
    answer = control(fake_api, "vanish", {"batch": BATCH, "callId": call_id})
    assert answer.json() == {"vanished": {"batch": BATCH, "callId": call_id}}
    assert call_id not in [c["callId"] for c in fake_api.created_calls(BATCH)]

    assert control(fake_api, "vanish", {"batch": BATCH}).json() == {"vanished": {"batch": BATCH}}
    assert api_session.get(listing_url(fake_api, "scheduled_calls"), timeout=5).status_code == 404


def test_state_says_where_each_batch_stands(fake_api: FakeUltravox) -> None:
    two_future_batches(fake_api)
    fake_api.advance_batches(1.0)
    fake_api.advance_batches(0.5)
    state = control(fake_api, "state").json()
    assert state == fake_api.describe()
    for batch in state["batches"]:
        assert list(batch["statuses"]) == list(STATUSES)
        assert sum(batch["statuses"].values()) == batch["calls"] == 40
        # Every call so far was created by the latest step: all wait for their billing.
        assert 0 < batch["billingPending"] == batch["createdCalls"]
        assert batch["createdCalls"] <= batch["statuses"]["SUCCESS"] + batch["statuses"]["ERROR"]
        assert batch["order"] == "stored"


@pytest.mark.parametrize(
    ("method", "action", "body", "status", "detail"),
    [
        ("POST", "advance", b"", 400, '"fraction" must be a number between 0 and 1.'),
        ("POST", "advance", b'{"fraction": 1.5}', 400, '"fraction" must be between 0 and 1.'),
        ("POST", "advance", b'{"fraction": true}', 400, '"fraction" must be a number'),
        ("POST", "advance", b'{"fraction": 0.1, "seed": "x"}', 400, '"seed" must be an integer.'),
        ("POST", "advance", b'{"fraction": 0.1, "batch": "nope"}', 404, "Not found: nope."),
        ("POST", "vanish", b"{}", 400, '"batch" (a batch id) is required.'),
        ("POST", "vanish", b'{"batch": "B", "calls": 1, "callId": "c"}', 400, "not both"),
        ("POST", "vanish", b'{"batch": "B", "calls": 41}', 400, "between 1 and 40"),
        ("POST", "vanish", b'{"batch": "B", "callId": "nope"}', 404, "Not found: nope."),
        ("POST", "vanish", b"[1]", 400, "The body is not a JSON object."),
        ("POST", "vanish", b"{", 400, "The body is not JSON."),
        ("GET", "advance", b"", 405, 'Method "GET" not allowed.'),
        ("DELETE", "state", b"", 405, 'Method "DELETE" not allowed.'),
        ("GET", "reset", b"", 404, "No control endpoint /_fake/reset"),
    ],
)
def test_control_errors(
    fake_api: FakeUltravox, method: str, action: str, body: bytes, status: int, detail: str
) -> None:
    fake_api.add_batch(AGENT_ID, BATCH, generate_calls(BATCH, 40))
    url = f"{fake_api.base_url}/_fake/{action}"
    answer = requests.request(
        method, url, data=body.replace(b'"B"', f'"{BATCH}"'.encode()), timeout=5
    )
    assert answer.status_code == status
    assert detail in answer.json()["detail"]
    if status == 405:
        assert answer.headers["Allow"] in ("GET", "POST")


def test_control_skips_the_key_latency_and_faults(
    fake_api: FakeUltravox, api_session: requests.Session
) -> None:
    fake_api.add_batch(AGENT_ID, BATCH, generate_calls(BATCH, 20))
    fake_api.inject(503, times=3)
    fake_api.latency_seconds = 1.0
    started = time.monotonic()
    assert control(fake_api, "state").status_code == 200
    assert control(fake_api, "advance", {"fraction": 0.1}).status_code == 200
    assert time.monotonic() - started < 1.0
    fake_api.latency_seconds = 0
    assert api_session.get(listing_url(fake_api, "scheduled_calls"), timeout=5).status_code == 503


# -- the command -------------------------------------------------------------------------------


def test_help_explains_every_action_option_and_endpoint() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "etl.fake_api", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for action in build_parser()._actions:
        assert action.help, f"{action.dest} has no help text"
        assert all(flag in result.stdout for flag in action.option_strings)
    for word in ("serve", "advance", "vanish", "state", "/_fake/advance", "/_fake/vanish"):
        assert word in result.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_command_refuses_what_does_not_fit(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["advance", "--port", "1", "--count", "2"]) == 2
    assert "--port, --count: not an option of advance" in capsys.readouterr().err
    assert main(["vanish"]) == 2
    assert main(["vanish", "--batch", BATCH, "--count", "1", "--call-id", "c"]) == 2
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["state", "--url", url]) == 1
    assert f"no fake API answers at {url}" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["state", "--url", "file:///etc/passwd"])


def test_the_command_runs_as_a_subcommand_of_another_parser(
    fake_api: FakeUltravox, capsys: pytest.CaptureFixture[str]
) -> None:
    fake_api.add_batch(AGENT_ID, BATCH, generate_calls(BATCH, 20))
    outer = argparse.ArgumentParser(prog="ultravox-etl")
    outer.add_argument("-q", "--quiet", action="store_true")
    add_arguments(outer.add_subparsers(dest="command").add_parser("fake-api"))
    args = outer.parse_args(["-q", "fake-api", "state", "--url", fake_api.base_url])
    assert run(args) == 0
    assert json.loads(capsys.readouterr().out) == fake_api.describe()


def test_serve_in_a_child_process_then_sync_and_steer_it(
    tmp_path: Path, run_cli: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    command = [sys.executable, "-m", "etl.fake_api", "--port", "0", "--batches", "2"]
    command += ["--calls", "40", "--seed", "3", "--api-key", TEST_API_KEY]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            lines: list[str] = []
            while not lines or lines[-1] != "Press Ctrl-C to stop.":
                line = process.stdout.readline()
                assert line, f"the fake stopped early: {lines}"
                lines.append(line.rstrip("\n"))
            found = re.search(r"on (http://127\.0\.0\.1:[0-9]+) ", lines[0])
            assert found, lines
            base_url = found[1]

            # The ids repeat with the seed; the printed config syncs as it is.
            twin = FakeUltravox()
            agent_id = add_generated_batches(twin, 2, 40, seed=3)
            start = lines.index("# ultravox-etl config for this fake: save it as fake.toml and run")
            config_file = tmp_path / "fake.toml"
            config_file.write_text("\n".join(lines[start : lines.index("# end of config")]))
            config = load_config(config_file, environ={"ULTRAVOX_API_KEY": TEST_API_KEY})
            assert config.api.base_url == base_url
            assert {(b.agent_id, b.batch_id) for b in config.batches} == {
                (agent_id, b) for b in twin.batches
            }
            database = f"sqlite:///{tmp_path / 'etl.db'}"
            synced = run_cli("sync", "--config", str(config_file), "--database-url", database)
            assert synced.exit_code == 0, synced.stderr
            assert synced.stdout.count("fetched=40/40") == 2

            def steer(*args: str) -> Any:
                capsys.readouterr()
                assert main([*args, "--url", base_url]) == 0
                return json.loads(capsys.readouterr().out)

            assert steer("state") == twin.describe()
            assert steer("advance", "--fraction", "0.5") == {"changed": twin.advance_batches(0.5)}
            state = steer("state")
            assert state == twin.describe()
            assert all(b["billingPending"] > 0 for b in state["batches"])
            first, second = list(twin.batches)
            steer("vanish", "--batch", first, "--count", "3")
            steer("vanish", "--batch", second)
            assert [(b["batchId"], b["calls"]) for b in steer("state")["batches"]] == [(first, 37)]
        finally:
            process.terminate()
