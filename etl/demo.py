"""`ultravox-etl demo`: the whole job against the built-in fake API, no account needed.

The batch ids are fixed, so running the demo again shows a re-sync that changes nothing.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine, func, select, text

from etl.cli import print_summary
from etl.config import ApiSettings, BatchRef, Config
from etl.fake_api import FakeUltravox, generate_calls
from etl.load.database import describe, open_engine, upgrade_to_head
from etl.load.schema import scheduled_calls
from etl.pipeline import run_sync

log = logging.getLogger(__name__)

DEMO_AGENT_ID = "6a1f5c9e-0d1b-4a57-9a8e-3f0c2b7d4e11"
DEMO_BATCHES = (
    ("0b7e4d52-1c9a-4f3e-8a6d-5e2f1c0b9a31", 180),
    ("4c2d9e81-7b3f-4a10-9c5e-8d1a6f2b3c42", 60),
    ("9e5a1b7c-3d2f-4e81-b6a0-2c4d8f1e7a53", 25),
)
DEMO_API_KEY = "demo-key-for-the-fake-api"


def run_demo(database_url: str) -> int:
    fake = FakeUltravox(api_key=DEMO_API_KEY)
    for batch_id, size in DEMO_BATCHES:
        fake.add_batch(DEMO_AGENT_ID, batch_id, generate_calls(batch_id, size, seed=7))
    with fake:
        config = Config(
            api=ApiSettings(base_url=fake.base_url, page_size=50),
            database_url=database_url,
            batches=tuple(BatchRef(DEMO_AGENT_ID, batch_id) for batch_id, _ in DEMO_BATCHES),
            api_key=DEMO_API_KEY,
            source="demo",
        )
        engine = open_engine(database_url)
        try:
            upgrade_to_head(engine)
            log.info(
                "demo: fake Ultravox API at %s, loading into %s", fake.base_url, describe(engine)
            )
            run = run_sync(config, engine)
            print_summary(run)
            print()
            print("calls per status per batch:")
            print_calls_per_status(engine)
            print()
            print("how each batch went (view scheduled_call_outcomes):")
            print_outcomes(engine)
        finally:
            engine.dispose()
    return run.exit_code


OUTCOMES = """
SELECT batch_id,
       count(*) AS scheduled,
       count(call_id) AS placed,
       count(joined_at) AS answered,
       round(1.0 * count(joined_at) / NULLIF(count(call_id), 0), 2) AS answer_rate,
       round(avg(billed_duration_seconds) / 60, 2) AS avg_billed_minutes
FROM scheduled_call_outcomes
WHERE removed_at IS NULL
GROUP BY batch_id
ORDER BY batch_id
"""
"""The README's "How each batch went" query."""


def print_outcomes(engine: Engine) -> None:
    with engine.connect() as conn:
        found = conn.execute(text(OUTCOMES)).all()
    header = ("scheduled", "placed", "answered", "rate", "avg min")
    print(f"{'batch_id':<38} " + " ".join(f"{h:>9}" for h in header))
    for r in found:
        rate = "-" if r.answer_rate is None else f"{float(r.answer_rate):.2f}"
        minutes = "-" if r.avg_billed_minutes is None else f"{float(r.avg_billed_minutes):.2f}"
        cells = (r.scheduled, r.placed, r.answered, rate, minutes)
        print(f"{r.batch_id:<38} " + " ".join(f"{c:>9}" for c in cells))


def print_calls_per_status(engine: Engine) -> None:
    c = scheduled_calls.c
    query = (
        select(c.batch_id, c.status, func.count().label("calls"))
        .where(c.removed_at.is_(None))
        .group_by(c.batch_id, c.status)
        .order_by(c.batch_id, c.status)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    print(f"{'batch_id':<38} {'status':<8} {'calls':>6}")
    for row in rows:
        print(f"{row.batch_id:<38} {row.status:<8} {row.calls:>6}")
