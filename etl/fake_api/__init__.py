"""A faithful fake of the Ultravox scheduled-batch API, served over real HTTP on localhost.

Stdlib only. Used by the test-suite, the demo command and the benchmark::

    with FakeUltravox(api_key="k") as fake:
        batch = fake.add_batch("agent-1")
        ...  # point the ETL at fake.base_url

It serves a batch list, batch details, `scheduled_calls` and `created_calls` (cursor
pagination, `X-API-Key`), every response shaped by Ultravox's published OpenAPI schema
(tests/test_fake_api_spec.py validates them). Tests steer it in-process: state
(`add_batch`, `set_call`, `drop_call`, `advance`, `finish_billing`, `add_created_call`,
`remove_created_call`, `remove_batch`), listing order (`set_order`), records served byte
for byte (`set_raw_record`), faults (`inject*`), latency, and the request log.

From outside the process, the control endpoints do it (etl.fake_api.control):
``POST /_fake/advance``, ``POST /_fake/vanish``, ``GET /_fake/state``.

Modules: server (FakeUltravox, HTTP, routing), batches (FakeBatch: a batch's state and
steps), scheduled_calls (generate_calls), calls (generated Call records), pagination,
faults, wire (JSON text, raw records), control (the /_fake/ endpoints), cli (the command:
``python -m etl.fake_api --help``).
"""

from etl.fake_api.batches import LISTING_ORDERS, FakeBatch, ListingOrder
from etl.fake_api.calls import END_REASONS, SECRET_MARK, call_secrets, generate_call
from etl.fake_api.cli import add_arguments, add_generated_batches, build_parser, main, run
from etl.fake_api.faults import retry_after_date
from etl.fake_api.scheduled_calls import ALL_MEDIUM_KEYS, STATUSES, generate_calls
from etl.fake_api.server import FakeUltravox, RecordedRequest
from etl.fake_api.wire import FakeResponse, RawRecord

__all__ = [
    "ALL_MEDIUM_KEYS",
    "END_REASONS",
    "LISTING_ORDERS",
    "SECRET_MARK",
    "STATUSES",
    "FakeBatch",
    "FakeResponse",
    "FakeUltravox",
    "ListingOrder",
    "RawRecord",
    "RecordedRequest",
    "add_arguments",
    "add_generated_batches",
    "build_parser",
    "call_secrets",
    "generate_call",
    "generate_calls",
    "main",
    "retry_after_date",
    "run",
]
