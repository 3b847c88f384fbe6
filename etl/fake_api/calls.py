"""Generated Call records: what `created_calls` lists for the calls a batch has placed.

A scheduled call that has a `callId` (SUCCESS, or ERROR after the call was created) has a
Call with that id. Its outcome is drawn from a generator seeded by the batch and call ids,
so the same call always ends the same way. A Call comes in two phases, as the real one
does: while its billing is pending the call is in progress (no `ended`, `endReason`,
billed duration, tokens or summaries); once billed, all of those are filled in.

Each Call carries secrets a loader must never store (`call_secrets` lists them): the
token in `joinUrl`, the `callbacks.*.secrets`, the `dataConnectionConfig.headers` and the
SIP password of its medium. Apart from the SIP password, which comes from the scheduled
call, each contains SECRET_MARK and is derived from the call id.
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from etl.fake_api.wire import timestamp

END_REASONS = ("unjoined", "hangup", "agent_hangup", "timeout", "connection_error", "system_error")
SECRET_MARK = "secret-"  # noqa: S105 - a marker to search for, not a credential
"""Every secret the fake makes up for a Call contains this."""
MAX_DURATION_SECONDS = 3600
"""A Call's `maxDuration` (the schema's default): a call ending in `timeout` lasted this long."""
JOIN_TIMEOUT_SECONDS = 30
"""A Call's `joinTimeout`: an unjoined call ends this long after it was created."""

# A placed call mostly ends in a hang-up; one whose scheduled call went to ERROR never
# got a conversation going.
_ENDS_OF_PLACED = {
    "hangup": 40,
    "agent_hangup": 30,
    "unjoined": 12,
    "connection_error": 8,
    "system_error": 5,
    "timeout": 5,
}
_ENDS_OF_FAILED = {"unjoined": 50, "connection_error": 25, "system_error": 25}
_PAID_BILLING = {
    "BILLING_STATUS_BILLED": 85,
    "BILLING_STATUS_FREE_MINUTES": 10,
    "BILLING_STATUS_REFUNDED": 5,
}
_SIP_UNANSWERED = (
    "SIP_TERMINATION_BUSY",
    "SIP_TERMINATION_TIMEOUT",
    "SIP_TERMINATION_REJECTED",
    "SIP_TERMINATION_DESTINATION_UNAVAILABLE",
)
_SIP_TERMINATION = {
    "hangup": "SIP_TERMINATION_NORMAL",
    "agent_hangup": "SIP_TERMINATION_NORMAL",
    "timeout": "SIP_TERMINATION_NORMAL",
    "connection_error": "SIP_TERMINATION_UNKNOWN",
    "system_error": "SIP_TERMINATION_CANCELED",
}
_SHORT_SUMMARIES = (
    "Customer confirmed the appointment.",
    "Customer asked to be called back next week.",
    "Customer declined the renewal offer.",
    "Voicemail reached; no message left.",
    "Customer updated their delivery address.",
)
_LANGUAGES = ("en-US", "en-US", "en-GB", "es-ES", "de-DE")
_VOICES = ("Mark", "Jessica", "Emily-English", "Carlos-Spanish")
# When a batch's `created` is not a time (a test may set anything), calls count from here.
_FALLBACK_ANCHOR = datetime(2025, 1, 1, tzinfo=UTC)


def generate_call(
    *,
    agent_id: str,
    batch_id: str,
    batch_created: str,
    scheduled: Mapping[str, Any],
    call_id: str,
    billed: bool,
) -> dict[str, Any]:
    """The Call that `scheduled` (a scheduled call of the batch) created, as `call_id`.

    Deterministic from (batch_id, call_id); timestamps count from `batch_created`, so a
    batch with a fixed `created` repeats them too. `billed` picks the phase (see the module).
    """
    rng = random.Random(f"{batch_id}|{call_id}|call")
    token = f"{rng.getrandbits(64):016x}"
    ends = _ENDS_OF_FAILED if scheduled.get("status") == "ERROR" else _ENDS_OF_PLACED
    end_reason = _weighted(rng, ends)
    joined_call = end_reason != "unjoined"

    created = _anchor(batch_created) + timedelta(seconds=rng.uniform(5, 900))
    joined = created + timedelta(seconds=rng.uniform(2, 25)) if joined_call else None
    talk_seconds = round(_talk_seconds(rng, end_reason), 3)
    if joined is not None:
        ended = joined + timedelta(seconds=talk_seconds)
    else:
        ended = created + timedelta(seconds=JOIN_TIMEOUT_SECONDS)

    if end_reason == "unjoined":
        billing_status = "BILLING_STATUS_FREE_ZERO_EFFECTIVE_DURATION"
    elif end_reason == "system_error":
        billing_status = "BILLING_STATUS_FREE_SYSTEM_ERROR"
    else:
        billing_status = _weighted(rng, _PAID_BILLING)
    free = billing_status in (
        "BILLING_STATUS_FREE_ZERO_EFFECTIVE_DURATION",
        "BILLING_STATUS_FREE_SYSTEM_ERROR",
    )
    input_tokens = int(talk_seconds * rng.uniform(9, 15))
    output_tokens = int(talk_seconds * rng.uniform(4, 8))
    short_summary = rng.choice(_SHORT_SUMMARIES) if joined_call else None

    medium = scheduled.get("medium")
    if not isinstance(medium, dict) or not medium:
        medium = {"webRtc": {}}  # the documented default of an absent or null medium
    is_sip = "sip" in medium
    placed_by_ultravox = any(
        isinstance(variant, dict) and "outgoing" in variant for variant in medium.values()
    )
    metadata = scheduled.get("metadata")
    sip_termination = (
        rng.choice(_SIP_UNANSWERED) if end_reason == "unjoined" else _SIP_TERMINATION[end_reason]
    )

    return {
        "callId": call_id,
        "clientVersion": "ultravox-client-js/0.9.2" if "webRtc" in medium and joined else None,
        "created": timestamp(created),
        "joined": timestamp(joined) if joined is not None else None,
        "ended": timestamp(ended) if billed else None,
        "endReason": end_reason if billed else None,
        "billedDuration": ("0s" if free else _duration(talk_seconds)) if billed else None,
        "billedSideInputTokens": input_tokens if billed else None,
        "billedSideOutputTokens": output_tokens if billed else None,
        "billingStatus": billing_status if billed else "BILLING_STATUS_PENDING",
        "firstSpeaker": "FIRST_SPEAKER_USER" if placed_by_ultravox else "FIRST_SPEAKER_AGENT",
        "firstSpeakerSettings": {"user": {}} if placed_by_ultravox else {"agent": {}},
        "initialOutputMedium": "MESSAGE_MEDIUM_VOICE",
        "joinTimeout": f"{JOIN_TIMEOUT_SECONDS}s",
        # An outgoing SIP call is dialled by Ultravox itself: nothing joins it by URL.
        "joinUrl": None
        if is_sip and "outgoing" in medium["sip"]
        else f"wss://voice.ultravox.example/calls/{call_id}/socket?token={SECRET_MARK}join-{token}",
        "languageHint": rng.choice(_LANGUAGES),
        "maxDuration": f"{MAX_DURATION_SECONDS}s",
        "medium": copy.deepcopy(medium),
        "model": "ultravox-v0.7",
        "recordingEnabled": rng.random() < 0.5,
        "voice": rng.choice(_VOICES),
        "shortSummary": short_summary if billed else None,
        "summary": _summary(short_summary, talk_seconds) if billed and short_summary else None,
        "agent": {"agentId": agent_id, "name": f"Outbound agent {agent_id[:8]}"},
        "agentId": agent_id,
        "experimentalSettings": copy.deepcopy(scheduled.get("experimentalSettings")),
        # The API only accepts string values, so a call was never created with others.
        "metadata": {
            key: value
            for key, value in (metadata.items() if isinstance(metadata, dict) else ())
            if isinstance(value, str)
        },
        "initialState": {},
        "requestContext": {},
        "dataConnectionConfig": {
            "websocketUrl": "wss://data.example.com/ultravox",
            "headers": {"Authorization": f"Bearer {SECRET_MARK}data-{token}"},
        },
        "callbacks": {
            event: {
                "url": f"https://hooks.example.com/ultravox/{event}",
                "secrets": [f"{SECRET_MARK}callback-{event}-{token}"],
            }
            for event in ("joined", "ended", "billed")
        },
        # The schema makes sipDetails an object (it is not nullable there): a call that is
        # not SIP, or not billed yet, has one whose fields are null.
        "sipDetails": {
            "billedDuration": _duration(math.ceil((ended - created).total_seconds()))
            if billed and is_sip
            else None,
            "terminationReason": sip_termination if billed and is_sip else None,
        },
    }


def call_secrets(record: Mapping[str, Any]) -> list[str]:
    """Every secret in a Call record: joinUrl, callback secrets, data connection headers and
    the SIP password. Works on hand-made records too (absent parts are skipped)."""
    secrets: list[str] = []
    if isinstance(record.get("joinUrl"), str):
        secrets.append(record["joinUrl"])
    callbacks = record.get("callbacks")
    for callback in callbacks.values() if isinstance(callbacks, dict) else ():
        if isinstance(callback, dict):
            secrets += [s for s in callback.get("secrets") or () if isinstance(s, str)]
    data_connection = record.get("dataConnectionConfig")
    headers = data_connection.get("headers") if isinstance(data_connection, dict) else None
    if isinstance(headers, dict):
        secrets += [v for v in headers.values() if isinstance(v, str)]
    medium = record.get("medium")
    sip = medium.get("sip") if isinstance(medium, dict) else None
    outgoing = sip.get("outgoing") if isinstance(sip, dict) else None
    if isinstance(outgoing, dict) and isinstance(outgoing.get("password"), str):
        secrets.append(outgoing["password"])
    return secrets


def _weighted(rng: random.Random, weights: Mapping[str, int]) -> str:
    return rng.choices(list(weights), list(weights.values()))[0]


def _talk_seconds(rng: random.Random, end_reason: str) -> float:
    """How long the call was joined before it ended."""
    if end_reason == "unjoined":
        return 0.0
    if end_reason == "timeout":
        return float(MAX_DURATION_SECONDS)
    if end_reason == "connection_error":
        return rng.uniform(5, 120)
    if end_reason == "system_error":
        return rng.uniform(1, 60)
    return rng.uniform(20, 900)


def _duration(seconds: float) -> str:
    """A protobuf Duration as JSON: "61s", "123.456s"."""
    whole, millis = divmod(round(seconds * 1000), 1000)
    return f"{whole}.{millis:03d}s" if millis else f"{whole}s"


def _summary(short_summary: str, talk_seconds: float) -> str:
    minutes = max(1, round(talk_seconds / 60))
    return (
        f"The agent reached the customer and talked for about {minutes} minute(s). "
        f"{short_summary} No follow-up was promised beyond what the customer asked for."
    )


def _anchor(batch_created: str) -> datetime:
    try:
        moment = datetime.fromisoformat(batch_created)
    except ValueError:
        return _FALLBACK_ANCHOR
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
