"""Every response of the fake API, validated against Ultravox's published OpenAPI schema.

The schema is shared/api/ultravox-openapi.yaml, from `shared/` beside the checkout, else the
workplace's /work/shared (a clone made elsewhere). Without it these tests skip, except under
CI (CI=true), where they fail.
As /work/shared/api/README.md says, the schema itself fails openapi-core's strict spec check,
so it is loaded with spec validation off, its `servers` pointed at the fake.

Every request goes through a session whose response hook validates what came over the wire;
a response the schema documents nothing for (the endpoints document only 200) is set aside
and checked by the test that made it.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from openapi_core import Config, OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse
from openapi_core.templating.responses.exceptions import ResponseNotFound
from openapi_core.validation.response.exceptions import InvalidData

from etl.fake_api import ALL_MEDIUM_KEYS, END_REASONS, STATUSES, FakeUltravox, generate_calls

_PLACES = (
    Path(__file__).resolve().parents[1].parent / "shared",  # beside this checkout
    Path("/work/shared"),  # the workplace's copy, for a checkout made elsewhere (a CI clone)
)
SCHEMA = next(
    (p / "api" / "ultravox-openapi.yaml" for p in _PLACES if (p / "api").is_dir()),
    _PLACES[0] / "api" / "ultravox-openapi.yaml",
)
KEY = "spec-key"
AGENT = "11111111-1111-4111-8111-111111111111"
BATCH = "33333333-3333-4333-8333-333333333333"
BATCHES = "/api/agents/{agent_id}/scheduled_batches"
SERVED_PATHS = (
    BATCHES,
    BATCHES + "/{batch_id}",
    BATCHES + "/{batch_id}/scheduled_calls",
    BATCHES + "/{batch_id}/created_calls",
)


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    if not SCHEMA.is_file():
        message = f"Ultravox's OpenAPI schema is not at {SCHEMA}"
        if os.environ.get("CI"):
            pytest.fail(f"{message} (CI must validate the fake against it)")
        pytest.skip(message)
    loaded: dict[str, Any] = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    return loaded


@dataclass
class SpecCheckedSession:
    """A session on the fake whose every response is validated against the schema."""

    session: requests.Session
    base_url: str
    validated: list[requests.Response] = field(default_factory=list)
    undocumented: list[requests.Response] = field(default_factory=list)

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.session.get(self.base_url + path, params=params or None, timeout=10)

    def walk(self, path: str, **params: Any) -> list[dict[str, Any]]:
        """Every result of a paginated listing, following `next`."""
        results: list[dict[str, Any]] = []
        response = self.get(path, **params)
        while True:
            assert response.status_code == 200, response.text
            page = response.json()
            results += page["results"]
            if page["next"] is None:
                return results
            response = self.session.get(page["next"], timeout=10)


@pytest.fixture
def fake() -> Iterator[FakeUltravox]:
    with FakeUltravox(KEY, max_page_size=500) as server:
        yield server


@pytest.fixture
def checked(schema: dict[str, Any], fake: FakeUltravox) -> Iterator[SpecCheckedSession]:
    api = OpenAPI.from_dict(
        {**schema, "servers": [{"url": fake.base_url}]}, config=Config(spec_validator_cls=None)
    )
    with requests.Session() as session:
        session.headers["X-API-Key"] = KEY
        checked = SpecCheckedSession(session, fake.base_url)

        def validate(response: requests.Response, *args: Any, **kwargs: Any) -> None:
            try:
                api.validate_response(
                    RequestsOpenAPIRequest(response.request), RequestsOpenAPIResponse(response)
                )
            except ResponseNotFound:
                checked.undocumented.append(response)
            else:
                checked.validated.append(response)

        session.hooks["response"].append(validate)
        yield checked


def calls_path(listing: str, batch_id: str = BATCH) -> str:
    return f"/api/agents/{AGENT}/scheduled_batches/{batch_id}/{listing}"


def medium_shape(record: dict[str, Any]) -> str:
    if "medium" not in record:
        return "<absent>"
    return next(iter(record["medium"]), "<empty>")


# -- the schema's side -----------------------------------------------------------------------


def test_the_served_endpoints_document_only_their_200_body(schema: dict[str, Any]) -> None:
    """So no error body of the fake has a schema to follow: the tests of the fake itself pin
    them to DRF's shape. Should Ultravox document one, this fails, and it must be validated."""
    for path in SERVED_PATHS:
        assert set(schema["paths"][path]["get"]["responses"]) == {"200"}, path


# -- batches ---------------------------------------------------------------------------------


def test_batch_list_and_details_follow_the_schema(
    fake: FakeUltravox, checked: SpecCheckedSession
) -> None:
    fake.add_batch(AGENT, BATCH, generate_calls(BATCH, 30))
    fake.add_batch(
        AGENT,
        calls=[],
        window_start="2025-05-01T09:00:00.000000Z",
        window_end="2025-05-01T17:00:00.000000Z",
        throttle="calls-per-minute",
        paused=True,
        webhook_url=None,
        webhook_secret=None,
    )
    finished = fake.add_batch(AGENT, calls=generate_calls("f", 20))
    while fake.advance(finished.batch_id, 1.0):
        pass
    assert finished.ended_at is not None

    batches = f"/api/agents/{AGENT}/scheduled_batches"
    listed = checked.walk(batches, pageSize=2)
    assert len(listed) == 3
    for batch in listed:
        assert checked.get(f"{batches}/{batch['batchId']}").status_code == 200
    assert len(checked.validated) == 2 + 3  # two pages, three batches' details
    assert checked.undocumented == []


# -- scheduled calls -------------------------------------------------------------------------


def test_scheduled_call_pages_follow_the_schema_in_every_medium_shape(
    fake: FakeUltravox, checked: SpecCheckedSession
) -> None:
    fake.add_batch(AGENT, BATCH, generate_calls(BATCH, 120, seed=2))
    fake.advance(BATCH, 0.3, seed=1)

    served = checked.walk(calls_path("scheduled_calls"), pageSize=25)
    assert len(served) == 120
    shapes = Counter(medium_shape(r) for r in served)
    assert {*ALL_MEDIUM_KEYS, "<absent>", "vonage"} <= set(shapes)  # vonage: newer than it
    for status in STATUSES:
        filtered = checked.walk(calls_path("scheduled_calls"), status=status, pageSize=25)
        assert {r["status"] for r in filtered} == {status}
    assert len(checked.validated) >= 5 + len(STATUSES)
    assert checked.undocumented == []


# -- created calls ---------------------------------------------------------------------------


def test_created_call_pages_follow_the_schema_billed_and_pending(
    fake: FakeUltravox, checked: SpecCheckedSession
) -> None:
    fake.add_batch(AGENT, BATCH, generate_calls(BATCH, 300, seed=4))
    billed = checked.walk(calls_path("created_calls"), pageSize=40)
    fake.advance(BATCH, 0.5, seed=1)  # new calls: billing pending
    after_step = checked.walk(calls_path("created_calls"), pageSize=40)

    assert len(after_step) > len(billed) > 100
    assert {c["endReason"] for c in billed} == set(END_REASONS)
    assert any(c["billingStatus"] == "BILLING_STATUS_PENDING" for c in after_step)
    assert any(c["sipDetails"]["terminationReason"] for c in billed)
    assert {*ALL_MEDIUM_KEYS, "vonage"} <= {medium_shape(c) for c in billed}
    assert len(checked.validated) >= 2 * 3
    assert checked.undocumented == []


# -- the check can fail ----------------------------------------------------------------------


def test_a_call_missing_a_required_field_is_reported(
    fake: FakeUltravox, checked: SpecCheckedSession
) -> None:
    fake.add_batch(AGENT, BATCH, generate_calls(BATCH, 20))
    call = dict(fake.created_calls(BATCH)[0])
    del call["summary"]
    fake.add_created_call(BATCH, call)
    with pytest.raises(InvalidData, match="'summary' is a required property"):
        checked.get(calls_path("created_calls"))


def test_a_null_medium_is_reported(fake: FakeUltravox, checked: SpecCheckedSession) -> None:
    fake.add_batch(AGENT, BATCH, generate_calls(BATCH, 20, off_spec=True))
    with pytest.raises(InvalidData, match="None for not nullable"):
        checked.get(calls_path("scheduled_calls"))


def test_an_injected_off_spec_page_is_reported(
    fake: FakeUltravox, checked: SpecCheckedSession
) -> None:
    fake.add_batch(AGENT, BATCH, generate_calls(BATCH, 20))
    fake.inject_payload({"results": [{"status": "DONE", "batchId": BATCH}], "next": None})
    with pytest.raises(InvalidData):
        checked.get(calls_path("scheduled_calls"))


# -- error answers -----------------------------------------------------------------------------


def test_error_answers_have_no_schema_to_follow(
    fake: FakeUltravox, checked: SpecCheckedSession
) -> None:
    fake.add_batch(AGENT, BATCH, generate_calls(BATCH, 20))
    assert checked.get(calls_path("scheduled_calls"), status="DONE").status_code == 400
    assert checked.get(calls_path("created_calls"), cursor="!!").status_code == 404
    assert checked.get(calls_path("scheduled_calls", batch_id=AGENT)).status_code == 404
    checked.session.headers["X-API-Key"] = "wrong"
    assert checked.get(calls_path("created_calls")).status_code == 401
    assert [r.status_code for r in checked.undocumented] == [400, 404, 404, 401]
    assert checked.validated == []
