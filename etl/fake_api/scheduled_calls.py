"""Generated ScheduledCall records: realistic, deterministic, and awkward where the API is.

`generate_calls` is what the fake serves by default and what the tests, the demo and the
benchmark load: every medium shape the schema allows (and one it does not know yet), every
status, metadata and template contexts that trip up careless JSON handling, and repeated
byte-identical definitions (scheduled calls have no id of their own).
"""

from __future__ import annotations

import bisect
import gc
import json
import random
import uuid
from typing import Any

ALL_MEDIUM_KEYS = ("webRtc", "twilio", "serverWebSocket", "telnyx", "plivo", "exotel", "sip")
STATUSES = ("FUTURE", "PENDING", "SUCCESS", "EXPIRED", "ERROR")
OPEN_STATUSES = frozenset({"FUTURE", "PENDING"})
"""Statuses a scheduled call leaves later; the others are final."""

ERRORS = (
    "Twilio error 21215: Geo Permission configuration is not permitting call",
    "SIP 486 Busy Here",
    "Call creation failed: 'to' is not a valid phone number",
    "Webhook https://hooks.example.com returned HTTP 500",
    "Telnyx error 90018: Call has already ended",
)
"""`error` texts of scheduled calls in status ERROR."""

_ABSENT: Any = object()  # a key left out of the object, as opposed to null

_LONG_NOTE = (
    "Customer asked to be called back after the renewal notice; prefers mornings. "
    "Mentioned a billing dispute from last quarter that support already resolved. "
) * 4  # ~630 characters: longer than any varchar(255) a loader might pick


def seeded_uuid(rng: random.Random) -> str:
    """A version-4 UUID drawn from `rng`, so ids repeat with the seed."""
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _phone(rng: random.Random) -> str:
    # 555-01xx numbers are reserved for fiction, so nothing real is ever dialled.
    return f"+1{rng.choice(('415', '212', '646', '312'))}55501{rng.randrange(100):02d}"


def _data_messages(rng: random.Random) -> dict[str, bool]:
    return {
        "pong": True,
        "state": True,
        "transcript": True,
        "clientToolInvocation": rng.random() < 0.7,
        "dataConnectionToolInvocation": False,
        "playbackClearBuffer": rng.random() < 0.5,
        "callStarted": True,
        "debug": False,
        "callEvent": rng.random() < 0.3,
        "toolUsed": True,
        # Newer than the documented list, present in the current schema.
        "userStartedSpeaking": True,
        "userStoppedSpeaking": rng.random() < 0.8,
        "invokingTool": True,
    }


def _dtmf() -> dict[str, Any]:
    return {
        "ignore": False,
        "userTextMessage": {"text": "pressed {digits}", "urgency": "URGENCY_SOON"},
    }


def _medium(case: int, rng: random.Random, k: int, *, off_spec: bool) -> Any:
    """One of the 15 medium shapes; _ABSENT means no `medium` key at all."""
    if case == 0:
        return {"webRtc": {"dataMessages": _data_messages(rng)}}
    if case == 1:
        outgoing = {"to": _phone(rng), "from": "+14155550100", "additionalParams": {"record": True}}
        return {"twilio": {"outgoing": outgoing}}
    if case == 2:
        rate = rng.choice((16000, 48000))
        return {
            "serverWebSocket": {
                "inputSampleRate": rate,
                "outputSampleRate": rng.choice((rate, 24000)),
                "clientBufferSizeMs": rng.choice((60, 30000)),
                "mediaIdleTimeout": "30s",
                "dataMessages": _data_messages(rng),
            }
        }
    if case == 3:
        return {"telnyx": {"outgoing": {"to": _phone(rng), "from": "+12125550100"}}}
    if case == 4:
        outgoing = {
            "to": f"{_phone(rng)}<{_phone(rng)}",  # Plivo dials several numbers split by '<'
            "from": "+13125550100",
            "additionalParams": {"ring_timeout": 45},
        }
        return {"plivo": {"outgoing": outgoing}}
    if case == 5:
        return {"exotel": {}}
    if case == 6:
        sip_outgoing = {
            "to": "sip:alice@example.com",
            "from": "sip:ultravox@pbx.example.com",
            "username": f"agent{k % 100:02d}",
            "password": f"s3cr3t-sip-pw-{k}",
        }
        return {"sip": {"outgoing": sip_outgoing}}
    if case == 7:
        return _ABSENT
    if case == 8:
        return {"webRtc": {}}
    if case == 9:
        outgoing = {"to": _phone(rng), "from": "+14155550100", "additionalParams": {}}
        return {"twilio": {"outgoing": outgoing, "dtmfHandling": _dtmf()}}
    if case == 10:
        return {"sip": {"incoming": {}}}
    if case == 11:
        # The schema lets `medium` be absent but not null; the API has been seen sending null,
        # so the job must survive it, but only a caller who asks gets it. Neither shape draws
        # from `rng`, so both choices leave every other call as it was.
        return None if off_spec else {"telnyx": {"dtmfHandling": _dtmf()}}
    if case == 12:
        return {"exotel": {"dtmfHandling": _dtmf()}}
    if case == 13:
        # A medium newer than the schema: the ETL must keep it, not drop it.
        return {
            "vonage": {"outgoing": {"to": f"+44770090{rng.randrange(1000):04d}", "region": "eu"}}
        }
    # A known medium carrying a field newer than the schema.
    outgoing = {"to": _phone(rng), "from": "+14155550100", "machineDetection": "Enable"}
    return {"twilio": {"outgoing": outgoing}}


_MEDIUM_CASES = 15


def _metadata(case: int, k: int) -> Any:
    if case == 0:
        return None
    if case == 1:
        return {}
    if case == 2:
        return {"customerId": f"cust-{k:06d}", "campaign": "spring-2025"}
    if case == 3:
        return {"名前": "Zoë 🚀", "campaign": "spring-ü", "note": "naïve café — “quoted”"}
    if case == 4:
        return {"customerId": f"cust-{k:06d}", "notes": _LONG_NOTE}
    return {"quote": 'He said "hi"\nthen left\t', "empty": "", "a.b": "dotted/key"}


_METADATA_CASES = 6


def _template_context(case: int, k: int) -> Any:
    if case == 0:
        return None
    if case == 1:
        return {}
    if case == 2:
        return {
            "customer": {"name": "Ada", "tier": "gold", "tags": ["vip", "early"]},
            "appointment": {"date": "2025-05-01", "slots": [9, 10.5, None]},
            "attempt": k % 3 + 1,
            "optIn": True,
        }
    if case == 3:
        return {"greeting": "¡Hola, José! 👋", "langs": ["es", "中文"], "emptyList": []}
    # 2**53 + 1 is not representable as a double: a precision trap for sloppy JSON handling.
    return {"a": {"b": {"c": {"d": [1, {"e": "f"}]}}}, "big": 9007199254740993, "ratio": 0.1}


_TEMPLATE_CASES = 5


def _experimental(case: int) -> Any:
    if case < 3:
        return _ABSENT
    if case < 6:
        return None
    return {"vadSettings": {"turnEndpointDelay": "0.384s"}, "someFlag": True}


_EXPERIMENTAL_CASES = 7

# Each block of 20 calls: 17 own definitions, and three copies that make repeats
# (slots 7 and 8 copy slot 6: three in a row; slot 15 copies a slot 2, spread out).
_REPEAT_OF = {7: 1, 8: 2, 15: 13}  # slot -> how many positions back the copied call is
# Statuses forced so each block holds all five; slots 2 and 6 are repeated, so they must
# have no callId (a created call's id is unique, so those could never be byte-identical).
_FORCED_STATUS = {0: "SUCCESS", 2: "FUTURE", 3: "ERROR", 5: "PENDING", 9: "EXPIRED"}
_STATUS_NAMES = ("SUCCESS", "FUTURE", "PENDING", "ERROR", "EXPIRED")
_STATUS_CUM_WEIGHTS = (45, 75, 85, 95, 100)
# slot -> index among the block's 17 own definitions
_OWN_INDEX = {
    slot: slot - sum(1 for r in _REPEAT_OF if r < slot)
    for slot in range(20)
    if slot not in _REPEAT_OF
}


def generate_calls(
    batch_id: str, n: int, *, seed: int = 0, off_spec: bool = False
) -> list[dict[str, Any]]:
    """`n` realistic ScheduledCall objects, deterministic from (batch_id, seed).

    Any n >= 20 holds every medium shape (each key of ALL_MEDIUM_KEYS, absent and an unknown
    one), every status, every metadata/templateContext/experimentalSettings shape and
    byte-identical repeated definitions. Every record fits the published schema, except
    with `off_spec`: then some calls carry `"medium": null` instead (the only difference),
    which the schema forbids but a robust client must survive.
    """
    # Millions of fresh containers set off repeated full GC passes that triple the run
    # time of a benchmark-sized batch; nothing built here is cyclic.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _generate(batch_id, n, random.Random(f"{batch_id}|{seed}"), off_spec=off_spec)
    finally:
        if was_enabled:
            gc.enable()


def _generate(batch_id: str, n: int, rng: random.Random, *, off_spec: bool) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    for k in range(n):
        block, slot = divmod(k, 20)
        if slot in _REPEAT_OF:
            back = _REPEAT_OF[slot] + (20 if slot == 15 and block > 0 else 0)
            # A deep copy (through the C JSON codec: far faster than copy.deepcopy).
            calls.append(json.loads(json.dumps(calls[k - back])))
            continue
        j = _OWN_INDEX[slot]
        if slot in _FORCED_STATUS:
            status = _FORCED_STATUS[slot]
        elif slot == 6:
            status = rng.choice(("FUTURE", "PENDING"))
        else:
            status = _STATUS_NAMES[bisect.bisect(_STATUS_CUM_WEIGHTS, rng.random() * 100)]
        call_id: str | None = None
        error: str | None = None
        if status == "SUCCESS":
            call_id = seeded_uuid(rng)
        elif status == "ERROR":
            error = rng.choice(ERRORS)
            if rng.random() < 0.4:
                call_id = seeded_uuid(rng)
        call: dict[str, Any] = {
            "status": status,
            "batchId": batch_id,
            "callId": call_id,
            "error": error,
        }
        # Rotating each aspect by a different step per block varies the combinations.
        medium = _medium((j + block * 7) % _MEDIUM_CASES, rng, k, off_spec=off_spec)
        if medium is not _ABSENT:
            call["medium"] = medium
        call["metadata"] = _metadata((j + block * 5) % _METADATA_CASES, k)
        call["templateContext"] = _template_context((j + block * 3) % _TEMPLATE_CASES, k)
        experimental = _experimental((j + block) % _EXPERIMENTAL_CASES)
        if experimental is not _ABSENT:
            call["experimentalSettings"] = experimental
        calls.append(call)
    return calls
