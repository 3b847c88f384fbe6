"""Unit tests of etl.normalize: documented payloads in, rows out (no I/O).

Payloads follow the documentation page of the list endpoint
(/work/shared/api/ultravox-list-scheduled-calls.txt) and the OpenAPI schemas
`ultravox.v1.CallMedium*`, `EnabledDataMessages`, `SipMedium_SipOutgoing`. The page's example
sets every medium variant in one object; a real call sets one, so each of the example's
per-variant sub-objects is used here as a medium of its own.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from typing import Any

import pytest

from etl.config import BatchRef
from etl.domain import KNOWN_STATUSES
from etl.normalize.json_values import (
    RecordError,
    RejectedRecord,
    storable_payload,
    unstorable_reason,
    without_keys,
)
from etl.normalize.medium import MEDIA_COLUMNS, SECRET_MEDIUM_KEYS, MediaRow
from etl.streams.scheduled_calls import (
    NormalizedScheduledCall,
    check_record,
    definition_digest,
    normalize_record,
    record_digest,
    secret_free_payload,
)

AGENT_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
BATCH_ID = "3c90c3cc-0d44-4b50-8888-8dd25736052a"  # the documentation's example batchId
OTHER_BATCH_ID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
CALL_ID = "6ba7b810-9dad-41d1-80b4-00c04fd430c8"
BATCH = BatchRef(agent_id=AGENT_ID, batch_id=BATCH_ID)
SIP_PASSWORD = "pw-Zq8!unique-sip-secret"
_ABSENT = object()

# scheduled_call_media as SCHEMA.md lists it, plus the columns this job added.
EXPECTED_MEDIA_COLUMNS = (
    "medium_type",
    "direction",
    "to_address",
    "from_address",
    "sip_username",
    "sip_password_set",
    "input_sample_rate",
    "output_sample_rate",
    "client_buffer_size_ms",
    "media_idle_timeout",
    "dtmf_handling",
    "additional_params",
    "extra",
)

# The documentation example's dataMessages object: every flag it lists, all true.
DOC_DATA_MESSAGES = {
    "pong": True,
    "state": True,
    "transcript": True,
    "clientToolInvocation": True,
    "dataConnectionToolInvocation": True,
    "playbackClearBuffer": True,
    "callStarted": True,
    "debug": True,
    "callEvent": True,
    "toolUsed": True,
}
DOC_FLAGS = tuple(DOC_DATA_MESSAGES.items())
DOC_OUTGOING = {"to": "<string>", "from": "<string>", "additionalParams": {}}

# The documentation example's medium object, every variant at once, exactly as published.
DOC_MEDIUM: dict[str, Any] = {
    "webRtc": {"dataMessages": DOC_DATA_MESSAGES},
    "twilio": {"outgoing": DOC_OUTGOING},
    "serverWebSocket": {
        "inputSampleRate": 123,
        "outputSampleRate": 123,
        "clientBufferSizeMs": 123,
        "dataMessages": DOC_DATA_MESSAGES,
    },
    "telnyx": {"outgoing": DOC_OUTGOING},
    "plivo": {"outgoing": DOC_OUTGOING},
    "exotel": {},
    "sip": {
        "incoming": {},
        "outgoing": {
            "to": "<string>",
            "from": "<string>",
            "username": "<string>",
            "password": "<string>",
        },
    },
}


def make_record(medium: Any = _ABSENT, **fields: Any) -> dict[str, Any]:
    """A scheduled call as the list endpoint returns it; `medium` left out unless given."""
    record: dict[str, Any] = {
        "status": "FUTURE",
        "batchId": BATCH_ID,
        "callId": None,
        "error": None,
        "metadata": {"customer": "c-1"},
        "templateContext": {"name": "Ada"},
        "experimentalSettings": None,
    }
    if medium is not _ABSENT:
        record["medium"] = medium
    record.update(fields)
    return record


def normalize_page(
    page: list[Any], batch: BatchRef = BATCH
) -> tuple[list[NormalizedScheduledCall], list[RejectedRecord]]:
    """The pure steps a loader takes for each record of a page: check, then normalize (a
    record that fails the check is kept as rejected_records keeps it)."""
    calls, rejects = [], []
    for position, record in enumerate(page):
        try:
            check_record(record, batch)
        except RecordError as exc:
            payload = storable_payload(secret_free_payload(record))
            rejects.append(RejectedRecord(position, str(exc), payload))
            continue
        calls.append(
            normalize_record(
                record,
                position=position,
                digest_of_record=record_digest(record),
                may_hold_nul=True,
            )
        )
    return calls, rejects


def normalize_one(record: dict[str, Any]) -> NormalizedScheduledCall:
    calls, rejects = normalize_page([record])
    assert rejects == []
    assert len(calls) == 1
    return calls[0]


def strip_secrets(value: Any) -> Any:
    return without_keys(value, SECRET_MEDIUM_KEYS)


def media_row(**columns: Any) -> MediaRow:
    """A full scheduled_call_media row: the given columns, every other one None."""
    assert set(columns) <= set(EXPECTED_MEDIA_COLUMNS), set(columns) - set(EXPECTED_MEDIA_COLUMNS)
    return MediaRow(**columns)


def test_media_columns_match_the_schema() -> None:
    assert MEDIA_COLUMNS == EXPECTED_MEDIA_COLUMNS


# --- each medium variant -------------------------------------------------------------------

VARIANT_CASES: list[tuple[str, dict[str, Any], MediaRow, tuple[tuple[str, bool], ...]]] = [
    (
        "webRtc-doc-example",
        {"webRtc": {"dataMessages": DOC_DATA_MESSAGES}},
        media_row(medium_type="webRtc"),
        DOC_FLAGS,
    ),
    (
        "webRtc-newer-flags",
        {
            "webRtc": {
                "dataMessages": {
                    "transcript": False,
                    "userStartedSpeaking": True,
                    "userStoppedSpeaking": False,
                    "invokingTool": True,
                }
            }
        },
        media_row(medium_type="webRtc"),
        (
            ("transcript", False),
            ("userStartedSpeaking", True),
            ("userStoppedSpeaking", False),
            ("invokingTool", True),
        ),
    ),
    ("webRtc-empty", {"webRtc": {}}, media_row(medium_type="webRtc"), ()),
    (
        "twilio-doc-example",
        {"twilio": {"outgoing": DOC_OUTGOING}},
        media_row(
            medium_type="twilio",
            direction="outgoing",
            to_address="<string>",
            from_address="<string>",
            additional_params={},
        ),
        (),
    ),
    (
        "twilio-outgoing-with-dtmf",
        {
            "twilio": {
                "outgoing": {
                    "to": "+14155552671",
                    "from": "+14155550100",
                    "additionalParams": {"record": True, "timeout": 30},
                },
                "dtmfHandling": {"ignore": True},
            }
        },
        media_row(
            medium_type="twilio",
            direction="outgoing",
            to_address="+14155552671",
            from_address="+14155550100",
            additional_params={"record": True, "timeout": 30},
            dtmf_handling={"ignore": True},
        ),
        (),
    ),
    (
        # No `outgoing`: the customer connects the call through the join URL; this job maps it
        # as incoming.
        "twilio-without-outgoing",
        {"twilio": {}},
        media_row(medium_type="twilio", direction="incoming"),
        (),
    ),
    (
        "serverWebSocket-doc-example",
        {
            "serverWebSocket": {
                "inputSampleRate": 123,
                "outputSampleRate": 123,
                "clientBufferSizeMs": 123,
                "dataMessages": DOC_DATA_MESSAGES,
            }
        },
        media_row(
            medium_type="serverWebSocket",
            input_sample_rate=123,
            output_sample_rate=123,
            client_buffer_size_ms=123,
        ),
        DOC_FLAGS,
    ),
    (
        "serverWebSocket-full",
        {
            "serverWebSocket": {
                "inputSampleRate": 16000,
                "outputSampleRate": 24000,
                "clientBufferSizeMs": 30000,
                "mediaIdleTimeout": "45s",
                "dataMessages": {
                    "playbackClearBuffer": True,
                    "userStartedSpeaking": True,
                    "userStoppedSpeaking": True,
                    "invokingTool": False,
                },
            }
        },
        media_row(
            medium_type="serverWebSocket",
            input_sample_rate=16000,
            output_sample_rate=24000,
            client_buffer_size_ms=30000,
            media_idle_timeout="45s",
        ),
        (
            ("playbackClearBuffer", True),
            ("userStartedSpeaking", True),
            ("userStoppedSpeaking", True),
            ("invokingTool", False),
        ),
    ),
    (
        "telnyx-doc-example",
        {"telnyx": {"outgoing": DOC_OUTGOING}},
        media_row(
            medium_type="telnyx",
            direction="outgoing",
            to_address="<string>",
            from_address="<string>",
            additional_params={},
        ),
        (),
    ),
    (
        "telnyx-outgoing",
        {"telnyx": {"outgoing": {"to": "+4930123456", "from": "+4930999999"}}},
        media_row(
            medium_type="telnyx",
            direction="outgoing",
            to_address="+4930123456",
            from_address="+4930999999",
        ),
        (),
    ),
    (
        "plivo-doc-example",
        {"plivo": {"outgoing": DOC_OUTGOING}},
        media_row(
            medium_type="plivo",
            direction="outgoing",
            to_address="<string>",
            from_address="<string>",
            additional_params={},
        ),
        (),
    ),
    (
        "plivo-multi-destination",
        {
            "plivo": {
                "outgoing": {
                    "to": "+14155552671<sip:desk@example.com<+14155552672",
                    "from": "+14155550100",
                    "additionalParams": {"ring_timeout": 20},
                },
                "dtmfHandling": {
                    "userTextMessage": {"text": "pressed {digits}", "urgency": "URGENCY_SOON"}
                },
            }
        },
        media_row(
            medium_type="plivo",
            direction="outgoing",
            to_address="+14155552671<sip:desk@example.com<+14155552672",
            from_address="+14155550100",
            additional_params={"ring_timeout": 20},
            dtmf_handling={
                "userTextMessage": {"text": "pressed {digits}", "urgency": "URGENCY_SOON"}
            },
        ),
        (),
    ),
    ("exotel-doc-example", {"exotel": {}}, media_row(medium_type="exotel"), ()),
    (
        "exotel-dtmf",
        {"exotel": {"dtmfHandling": {"ignore": False, "userTextMessage": {"text": "{digits}"}}}},
        media_row(
            medium_type="exotel",
            dtmf_handling={"ignore": False, "userTextMessage": {"text": "{digits}"}},
        ),
        (),
    ),
    (
        "sip-outgoing",
        {
            "sip": {
                "outgoing": {
                    "to": "sip:agent@pbx.example.com",
                    "from": "sip:ultravox@example.com",
                    "username": "alice",
                    "password": SIP_PASSWORD,
                }
            }
        },
        media_row(
            medium_type="sip",
            direction="outgoing",
            to_address="sip:agent@pbx.example.com",
            from_address="sip:ultravox@example.com",
            sip_username="alice",
            sip_password_set=True,
        ),
        (),
    ),
    (
        "sip-outgoing-without-password",
        {"sip": {"outgoing": {"to": "sip:agent@pbx.example.com", "from": "sip:u@example.com"}}},
        media_row(
            medium_type="sip",
            direction="outgoing",
            to_address="sip:agent@pbx.example.com",
            from_address="sip:u@example.com",
            sip_password_set=False,
        ),
        (),
    ),
    (
        "sip-outgoing-empty-password",
        {"sip": {"outgoing": {"to": "sip:a@example.com", "username": "bob", "password": ""}}},
        media_row(
            medium_type="sip",
            direction="outgoing",
            to_address="sip:a@example.com",
            sip_username="bob",
            sip_password_set=False,
        ),
        (),
    ),
    (
        "sip-incoming",
        {"sip": {"incoming": {}}},
        media_row(medium_type="sip", direction="incoming"),
        (),
    ),
]


@pytest.mark.parametrize(
    ("medium", "expected_media", "expected_flags"),
    [pytest.param(m, row, flags, id=name) for name, m, row, flags in VARIANT_CASES],
)
def test_medium_variant_rows(
    medium: dict[str, Any],
    expected_media: MediaRow,
    expected_flags: tuple[tuple[str, bool], ...],
) -> None:
    record = make_record(medium)
    sent = copy.deepcopy(record)

    result = normalize_one(record)

    assert result.media == expected_media
    assert result.data_messages == expected_flags
    assert result.call.medium_type == expected_media.medium_type
    assert record == sent, "normalization must not modify the record it was given"


@pytest.mark.parametrize("medium", [_ABSENT, None, {}], ids=["absent", "null", "empty"])
def test_missing_medium_is_webrtc_without_extra(medium: Any) -> None:
    result = normalize_one(make_record(medium))

    assert result.media == media_row(medium_type="webRtc")
    assert result.data_messages == ()
    assert result.call.medium_type == "webRtc"


def test_doc_example_medium_with_every_variant_keeps_the_others_in_extra() -> None:
    # "At most one call medium may be set"; the published example sets them all. The first
    # known key is the medium, the rest is kept in `extra`, minus the SIP password.
    record = make_record(copy.deepcopy(DOC_MEDIUM))

    result = normalize_one(record)

    expected_extra = {
        "twilio": {"outgoing": DOC_OUTGOING},
        "serverWebSocket": DOC_MEDIUM["serverWebSocket"],
        "telnyx": {"outgoing": DOC_OUTGOING},
        "plivo": {"outgoing": DOC_OUTGOING},
        "exotel": {},
        "sip": {
            "incoming": {},
            "outgoing": {"to": "<string>", "from": "<string>", "username": "<string>"},
        },
    }
    assert result.media == media_row(medium_type="webRtc", extra=expected_extra)
    assert result.data_messages == DOC_FLAGS


def test_sip_with_both_directions_takes_outgoing_and_keeps_incoming_in_extra() -> None:
    result = normalize_one(make_record({"sip": copy.deepcopy(DOC_MEDIUM["sip"])}))

    assert result.media == media_row(
        medium_type="sip",
        direction="outgoing",
        to_address="<string>",
        from_address="<string>",
        sip_username="<string>",
        sip_password_set=True,
        extra={"sip": {"incoming": {}}},
    )


def test_second_variant_in_one_medium_is_kept_in_extra() -> None:
    medium = {
        "telnyx": {"outgoing": {"to": "+15550001", "from": "+15550002"}},
        "twilio": {"outgoing": {"to": "+15550003"}},
    }
    result = normalize_one(make_record(medium))

    assert result.media == media_row(
        medium_type="telnyx",
        direction="outgoing",
        to_address="+15550001",
        from_address="+15550002",
        extra={"twilio": {"outgoing": {"to": "+15550003"}}},
    )


# --- what no column holds goes to `extra` ---------------------------------------------------


def test_unknown_variant_is_its_key_with_the_whole_variant_in_extra() -> None:
    variant = {
        "outgoing": {"to": "+14155552671", "from": "+14155550100", "region": "eu"},
        "codecs": ["opus", "pcmu"],
        "dataMessages": {"pong": True},
    }
    result = normalize_one(make_record({"whatsApp": copy.deepcopy(variant)}))

    assert result.media == media_row(medium_type="whatsApp", extra={"whatsApp": variant})
    assert result.data_messages == ()
    assert result.call.medium_type == "whatsApp"


def test_unknown_variant_after_a_known_one_does_not_win() -> None:
    medium = {"futureMedium": {"x": 1}, "exotel": {}}
    result = normalize_one(make_record(medium))

    assert result.media == media_row(medium_type="exotel", extra={"futureMedium": {"x": 1}})


def test_unknown_variant_that_is_not_an_object_is_kept_as_sent() -> None:
    result = normalize_one(make_record({"futureFlag": True}))

    assert result.media == media_row(medium_type="futureFlag", extra={"futureFlag": True})


def test_unknown_fields_of_twilio_outgoing_are_kept_in_extra() -> None:
    medium = {
        "twilio": {
            "outgoing": {
                "to": "+14155552671",
                "from": "+14155550100",
                "additionalParams": {},
                "machineDetection": "DetectMessageEnd",
            },
            "region": "ie1",
        }
    }
    result = normalize_one(make_record(medium))

    assert result.media == media_row(
        medium_type="twilio",
        direction="outgoing",
        to_address="+14155552671",
        from_address="+14155550100",
        additional_params={},
        extra={"twilio": {"outgoing": {"machineDetection": "DetectMessageEnd"}, "region": "ie1"}},
    )


def test_unknown_and_mistyped_fields_of_server_websocket_are_kept_in_extra() -> None:
    medium = {
        "serverWebSocket": {
            "inputSampleRate": "16000",
            "outputSampleRate": True,
            "clientBufferSizeMs": 60,
            "mediaIdleTimeout": 30,
            "newField": {"enabled": True},
            "dataMessages": {"pong": "yes", "state": False, "brandNewFlag": True},
        }
    }
    result = normalize_one(make_record(medium))

    assert result.media == media_row(
        medium_type="serverWebSocket",
        client_buffer_size_ms=60,
        extra={
            "serverWebSocket": {
                "inputSampleRate": "16000",
                "outputSampleRate": True,
                "mediaIdleTimeout": 30,
                "newField": {"enabled": True},
                "dataMessages": {"pong": "yes"},
            }
        },
    )
    assert result.data_messages == (("state", False), ("brandNewFlag", True))


def test_mistyped_outgoing_fields_are_kept_in_extra() -> None:
    medium = {
        "plivo": {
            "outgoing": {"to": ["+15550001", "+15550002"], "from": "+15550100"},
            "dtmfHandling": "ignore",
        }
    }
    result = normalize_one(make_record(medium))

    assert result.media == media_row(
        medium_type="plivo",
        direction="outgoing",
        from_address="+15550100",
        extra={"plivo": {"outgoing": {"to": ["+15550001", "+15550002"]}, "dtmfHandling": "ignore"}},
    )


def test_known_variant_that_is_not_an_object_is_kept_in_extra() -> None:
    result = normalize_one(make_record({"twilio": "legacy"}))

    assert result.media == media_row(medium_type="twilio", extra={"twilio": "legacy"})


def test_data_messages_that_are_not_an_object_are_kept_in_extra() -> None:
    result = normalize_one(make_record({"webRtc": {"dataMessages": ["pong"]}}))

    assert result.media == media_row(
        medium_type="webRtc", extra={"webRtc": {"dataMessages": ["pong"]}}
    )
    assert result.data_messages == ()


# --- the SIP password -----------------------------------------------------------------------


def sip_record(password: str | None, **fields: Any) -> dict[str, Any]:
    outgoing: dict[str, Any] = {
        "to": "sip:agent@pbx.example.com",
        "from": "sip:ultravox@example.com",
        "username": "alice",
    }
    if password is not None:
        outgoing["password"] = password
    return make_record({"sip": {"outgoing": outgoing}}, **fields)


def everything_as_text(result: NormalizedScheduledCall) -> str:
    return repr(result) + json.dumps(dataclasses.asdict(result), ensure_ascii=False)


def test_sip_password_is_nowhere_in_the_output() -> None:
    record = sip_record(SIP_PASSWORD)
    # Newer fields carrying a password elsewhere in the medium are stripped too.
    record["medium"]["sip"]["outgoing"]["auth"] = {"password": SIP_PASSWORD, "realm": "pbx"}
    record["medium"]["futureMedium"] = {"credentials": [{"password": SIP_PASSWORD}]}

    result = normalize_one(record)

    assert SIP_PASSWORD not in everything_as_text(result)
    assert result.media.sip_password_set is True
    assert result.media.extra == {
        "sip": {"outgoing": {"auth": {"realm": "pbx"}}},
        "futureMedium": {"credentials": [{}]},
    }
    assert record["medium"]["sip"]["outgoing"]["password"] == SIP_PASSWORD  # input untouched


def test_sip_password_set_is_false_without_password() -> None:
    result = normalize_one(sip_record(None))

    assert result.media.sip_password_set is False
    assert result.media.extra is None


def test_sip_password_is_not_part_of_the_call_key() -> None:
    page = [sip_record("first-password"), sip_record("second-password"), sip_record(None)]
    calls, rejects = normalize_page(page)

    assert rejects == []
    assert len({c.definition_digest for c in calls}) == 1
    assert len({c.record_digest for c in calls}) == 2  # the password is no part of either
    assert definition_digest(page[0]) == definition_digest(page[1]) == definition_digest(page[2])
    # Only the flag differs between the children.
    assert calls[0].detail_hash == calls[1].detail_hash != calls[2].detail_hash


def test_rejected_record_payload_has_no_password() -> None:
    record = sip_record(SIP_PASSWORD, batchId=OTHER_BATCH_ID)

    calls, rejects = normalize_page([record])

    assert calls == []
    assert len(rejects) == 1
    assert SIP_PASSWORD not in repr(rejects[0])
    assert rejects[0].payload == {
        **record,
        "medium": {
            "sip": {
                "outgoing": {
                    "to": "sip:agent@pbx.example.com",
                    "from": "sip:ultravox@example.com",
                    "username": "alice",
                }
            }
        },
    }


def test_strip_secrets_removes_password_at_any_depth() -> None:
    value = {
        "password": "top",
        "sip": {"outgoing": {"to": "sip:x@example.com", "password": "deep"}},
        "list": [{"password": "in-list", "keep": 1}, [{"nested": {"password": "x", "y": 2}}]],
        "scalar": "password",
    }
    sent = copy.deepcopy(value)

    assert strip_secrets(value) == {
        "sip": {"outgoing": {"to": "sip:x@example.com"}},
        "list": [{"keep": 1}, [{"nested": {"y": 2}}]],
        "scalar": "password",
    }
    assert value == sent
    assert strip_secrets("password") == "password"
    assert strip_secrets(None) is None


def test_medium_with_only_a_secret_key_is_the_default_medium() -> None:
    result = normalize_one(make_record({"password": SIP_PASSWORD}))

    assert result.media == media_row(medium_type="webRtc")
    assert SIP_PASSWORD not in everything_as_text(result)


# --- metadata -------------------------------------------------------------------------------


def test_metadata_entries_strings_as_is_others_as_json_text() -> None:
    metadata = {
        "customer": "Zoë Ångström",
        "名前": "太郎 🎉",
        "count": "3",
        "attempts": 3,
        "ratio": 0.5,
        "vip": True,
        "none": None,
        "tags": ["a", "ü"],
        "nested": {"b": 1, "a": "x"},
        "empty": "",
    }
    result = normalize_one(make_record(metadata=copy.deepcopy(metadata)))

    assert result.metadata_entries == (
        ("customer", "Zoë Ångström"),
        ("名前", "太郎 🎉"),
        ("count", "3"),
        ("attempts", "3"),
        ("ratio", "0.5"),
        ("vip", "true"),
        ("none", "null"),
        ("tags", '["a","ü"]'),
        ("nested", '{"a":"x","b":1}'),
        ("empty", ""),
    )
    assert result.call.metadata == metadata


@pytest.mark.parametrize(
    ("metadata", "stored"), [({}, {}), (None, None), (_ABSENT, None)], ids=["{}", "null", "absent"]
)
def test_no_metadata_entries(metadata: Any, stored: Any) -> None:
    record = make_record()
    if metadata is _ABSENT:
        del record["metadata"]
    else:
        record["metadata"] = metadata

    result = normalize_one(record)

    assert result.metadata_entries == ()
    assert result.call.metadata == stored


# --- the call row and the call key ---------------------------------------------------------


def test_call_row_columns() -> None:
    record = make_record(
        {"twilio": {"outgoing": {"to": "+14155552671"}}},
        status="SUCCESS",
        batchId=BATCH_ID.upper(),
        callId=CALL_ID.upper(),
        error=None,
        metadata={"customer": "c-9"},
        templateContext={"name": "Ada", "items": [1, 2]},
        experimentalSettings={"flag": True},
    )
    result = normalize_one(record)

    assert dataclasses.asdict(result.call) == {
        "call_id": CALL_ID,
        "status": "SUCCESS",
        "error": None,
        "medium_type": "twilio",
        "metadata": {"customer": "c-9"},
        "template_context": {"name": "Ada", "items": [1, 2]},
        "experimental_settings": {"flag": True},
        "nul_escaped_record": None,
    }
    assert re.fullmatch("[0-9a-f]{32}", result.definition_digest)
    assert re.fullmatch("[0-9a-f]{32}", result.record_digest)


@pytest.mark.parametrize("status", [*sorted(KNOWN_STATUSES), "CANCELLED", "paused_by_user"])
def test_status_passes_through_unchanged(status: str) -> None:
    result = normalize_one(make_record(status=status, error="boom" if status == "ERROR" else None))

    assert result.call.status == status


def test_digests_are_deterministic() -> None:
    record = make_record({"exotel": {}}, metadata={"b": "2", "a": "1"})
    reordered = make_record({"exotel": {}}, metadata={"a": "1", "b": "2"})

    first = normalize_one(record)
    second = normalize_one(copy.deepcopy(record))
    third = normalize_one(reordered)

    assert first.definition_digest == second.definition_digest == third.definition_digest
    assert first.record_digest == second.record_digest == third.record_digest
    assert first.call_hash == second.call_hash == third.call_hash
    assert first.detail_hash == second.detail_hash
    # Only the order of the metadata rows differs: the same child rows, so the same hash.
    assert first.detail_hash == third.detail_hash


@pytest.mark.parametrize(
    "change",
    [
        {"metadata": {"customer": "c-2"}},
        {"metadata": {"customer": "c-1", "extra": "x"}},
        {"metadata": None},
        {"templateContext": {"name": "Grace"}},
        {"templateContext": None},
        {"experimentalSettings": {"beta": True}},
        {"medium": {"exotel": {}}},
        {"medium": {"twilio": {"outgoing": {"to": "+15550002"}}}},
    ],
    ids=repr,
)
def test_a_different_definition_gets_a_different_digest(change: dict[str, Any]) -> None:
    base = make_record({"twilio": {"outgoing": {"to": "+15550001"}}})
    changed = {**base, **change}

    assert definition_digest(base) != definition_digest(changed)


def test_status_call_id_and_error_do_not_change_the_key() -> None:
    future = make_record({"plivo": {"outgoing": {"to": "+15550001"}}}, status="FUTURE")
    pending = {**future, "status": "PENDING"}
    success = {**future, "status": "SUCCESS", "callId": CALL_ID.upper()}
    failed = {**future, "status": "ERROR", "error": "number unreachable"}

    results = [normalize_one(r) for r in (future, pending, success, failed)]

    assert len({r.definition_digest for r in results}) == 1
    assert len({r.record_digest for r in results}) == 4
    assert len({r.call_hash for r in results}) == 4
    assert len({r.detail_hash for r in results}) == 1
    assert results[2].call.call_id == CALL_ID
    assert results[3].call.error == "number unreachable"


def test_detail_hash_follows_the_child_rows() -> None:
    base = make_record({"webRtc": {"dataMessages": {"pong": True}}})
    flag_changed = make_record({"webRtc": {"dataMessages": {"pong": False}}})
    metadata_changed = make_record({"webRtc": {"dataMessages": {"pong": True}}}, metadata={})

    hashes = [normalize_one(r).detail_hash for r in (base, flag_changed, metadata_changed)]

    assert len(set(hashes)) == 3


def test_call_id_is_lowercased() -> None:
    result = normalize_one(
        make_record(status="SUCCESS", callId="6BA7B810-9DAD-41D1-80B4-00C04FD430C8")
    )

    assert result.call.call_id == "6ba7b810-9dad-41d1-80b4-00c04fd430c8"


# --- records that do not fit ----------------------------------------------------------------


def without(record: dict[str, Any], name: str) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != name}


REJECT_CASES: list[tuple[str, Any, str]] = [
    ("missing-status", without(make_record(), "status"), "missing or non-string 'status'"),
    ("empty-status", make_record(status=""), "missing or non-string 'status'"),
    ("numeric-status", make_record(status=3), "missing or non-string 'status'"),
    ("missing-batchId", without(make_record(), "batchId"), "missing or non-string 'batchId'"),
    (
        "other-batch",
        make_record(batchId=OTHER_BATCH_ID),
        f"'batchId' '{OTHER_BATCH_ID}' is not the batch being listed",
    ),
    ("callId-number", make_record(callId=12345), "'callId' is neither a string nor null"),
    ("error-object", make_record(error={"code": 1}), "'error' is neither a string nor null"),
    ("metadata-list", make_record(metadata=["a", "b"]), "'metadata' is neither an object nor null"),
    (
        # The documentation example's own placeholder.
        "metadata-string",
        make_record(metadata="<unknown>"),
        "'metadata' is neither an object nor null",
    ),
    ("medium-string", make_record("webRtc"), "'medium' is neither an object nor null"),
    ("medium-list", make_record([{"webRtc": {}}]), "'medium' is neither an object nor null"),
    ("string", "FUTURE", "expected a JSON object, got str"),
    ("null", None, "expected a JSON object, got NoneType"),
    ("list", [make_record()], "expected a JSON object, got list"),
]


@pytest.mark.parametrize(
    ("record", "reason"), [pytest.param(r, reason, id=n) for n, r, reason in REJECT_CASES]
)
def test_check_record_rejects(record: Any, reason: str) -> None:
    with pytest.raises(RecordError) as raised:
        check_record(record, BATCH)

    assert str(raised.value) == reason
    assert "\n" not in reason


def test_check_record_accepts_a_documented_record() -> None:
    record = make_record(
        {"sip": {"incoming": {}}},
        batchId=BATCH_ID.upper(),
        callId=CALL_ID,
        error="<string>",
        metadata=None,
        templateContext="<unknown>",
        experimentalSettings="<unknown>",
    )

    check_record(record, BATCH)  # does not raise
    assert normalize_one(record).call.template_context == "<unknown>"


def test_normalize_page_keeps_good_records_and_rejects_the_others() -> None:
    good = make_record({"sip": {"outgoing": {"to": "sip:a@example.com", "password": "pw"}}})
    bad_records = [r for _, r, _ in REJECT_CASES]
    page: list[Any] = [copy.deepcopy(good)]
    for bad in bad_records:
        page += [copy.deepcopy(bad), copy.deepcopy(good)]

    calls, rejects = normalize_page(page)

    assert [c.position for c in calls] == [2 * i for i in range(len(bad_records) + 1)]
    assert len({c.definition_digest for c in calls}) == 1
    assert all(c.media.sip_password_set is True for c in calls)
    assert rejects == [
        RejectedRecord(
            position=2 * i + 1,
            reason=reason,
            payload=storable_payload(secret_free_payload(record)),
        )
        for i, (_, record, reason) in enumerate(REJECT_CASES)
    ]


def test_rejected_records_keep_their_payload_as_sent_minus_secrets() -> None:
    bad = make_record(
        {"sip": {"outgoing": {"to": "sip:a@example.com", "password": SIP_PASSWORD}}},
        metadata=["not", "an", "object"],
    )

    _, rejects = normalize_page([make_record(), bad])

    assert rejects == [
        RejectedRecord(
            position=1,
            reason="'metadata' is neither an object nor null",
            payload={**bad, "medium": {"sip": {"outgoing": {"to": "sip:a@example.com"}}}},
        )
    ]


# --- U+0000, which PostgreSQL text and jsonb refuse ------------------------------------------


def test_a_record_with_nul_is_stored_replaced_and_kept_exactly_as_escaped_json() -> None:
    record = make_record(
        {"sip": {"outgoing": {"to": "sip:a\x00b@example.com", "password": "pw\x00"}}},
        error="line one\x00line two",
        metadata={"k\x00ey": "v\x00alue", "plain": "ok"},
        templateContext={"nested": ["a\x00", {"b": "\x00"}]},
    )
    [call], rejects = normalize_page([record])

    assert rejects == []
    assert call.call.error == "line one\ufffdline two"
    assert call.call.metadata == {"k\ufffdey": "v\ufffdalue", "plain": "ok"}
    assert call.call.template_context == {"nested": ["a\ufffd", {"b": "\ufffd"}]}
    assert call.media.to_address == "sip:a\ufffdb@example.com"
    assert ("k\ufffdey", "v\ufffdalue") in call.metadata_entries
    escaped = call.call.nul_escaped_record
    assert escaped is not None
    assert "\x00" not in escaped and "\\u0000" in escaped
    expected = copy.deepcopy(record)
    del expected["medium"]["sip"]["outgoing"]["password"]
    assert json.loads(escaped) == expected
    assert "\x00" not in json.dumps(dataclasses.asdict(call), ensure_ascii=False)


def test_a_record_without_nul_has_no_escaped_copy() -> None:
    [call], _ = normalize_page([make_record(error="fine")])
    assert call.call.nul_escaped_record is None


def test_nul_in_a_rejected_record_is_replaced_in_its_payload() -> None:
    bad = make_record(metadata=["not", "an object\x00"])
    calls, [reject] = normalize_page([bad])
    assert calls == []
    assert reject.payload["metadata"] == ["not", "an object\ufffd"]


def test_a_lone_surrogate_is_replaced_and_the_record_kept_as_ascii_json() -> None:
    record = make_record(error="odd \ud800 one", metadata={"k": "v\udfff"})
    [call], rejects = normalize_page([record])
    assert rejects == []
    assert call.call.error == "odd \ufffd one"
    assert call.metadata_entries == (("k", "v\ufffd"),)
    escaped = call.call.nul_escaped_record
    assert escaped is not None and escaped.isascii() and json.loads(escaped) == record


def test_a_metadata_key_too_long_to_index_has_no_row_but_stays_in_the_json() -> None:
    long_key = "k" * 1001
    call = normalize_one(make_record(metadata={long_key: "v", "short": "s"}))
    assert call.metadata_entries == (("short", "s"),)
    assert call.call.metadata == {long_key: "v", "short": "s"}


def _levels(value: Any) -> int:
    """Levels of nesting of a JSON value: 0 for a scalar."""
    if isinstance(value, dict):
        return 1 + max(map(_levels, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_levels, value), default=0)
    return 0


def test_a_rejected_payload_holds_at_most_31_levels_which_mariadb_accepts() -> None:
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    calls, [reject] = normalize_page([make_record(metadata={"tree": deep})])
    assert calls == []
    assert reject.reason.startswith("nested deeper than 32 levels")
    assert _levels(reject.payload) == 31
    assert "(nested 32 levels deep or deeper: not kept)" in json.dumps(reject.payload)


def test_a_strictly_parsed_record_is_still_rejected_when_nested_too_deep() -> None:
    deep: Any = 1
    for _ in range(40):
        deep = [deep]
    # Read by orjson (no NaN or infinity possible), only a record with 32 or more objects
    # and arrays is walked; a deep one has them, a shallow one with many is walked and passes.
    with pytest.raises(RecordError, match="nested deeper than 32 levels"):
        check_record(make_record(metadata={"tree": deep}), BATCH, lenient=False)
    check_record(make_record(templateContext={"rows": [{"n": n} for n in range(40)]}), BATCH,
                 lenient=False)  # fmt: skip
    assert unstorable_reason({"callId": "c", "tree": deep}, lenient=False) == (
        "nested deeper than 32 levels"
    )
    assert unstorable_reason({"callId": "c", "rows": [[{}]] * 40}, lenient=False) is None
