"""What one Airflow task syncs per second: the figure the README's scaling arithmetic uses.

    python -m bench.worker                  # one batch of 100,000 calls, both streams
    python -m bench.worker --calls 20000 --rate-cap 20 --page-size 1000

One `sync_batch` task instance syncs one batch: one worker thread (`concurrency` 1) under
its own client-side cap (`[api] max_requests_per_second`, 20 by default). This runs exactly
that through `etl.pipeline.sync` against the benchmark's fake API (its own process, no
latency) into a fresh PostgreSQL database: a first load, then a re-sync with nothing
changed, each in a fresh process. It prints records per second, requests per second and
the CPU seconds of the client and of the database server, per scenario, and what bounds it:
the cap (requests/s at the cap) or the machine.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python bench/worker.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import DEFAULT_POSTGRES_URL, FakeServer, ScratchDatabases, in_child


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.worker", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--calls", type=int, default=100_000, help="calls of the one batch")
    parser.add_argument("--page-size", type=int, default=1000, help="[api] page_size (1,000)")
    parser.add_argument(
        "--rate-cap", type=float, default=20.0, help="[api] max_requests_per_second (20)"
    )
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get("ULTRAVOX_ETL_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL),
    )
    args = parser.parse_args(argv)

    server = FakeServer(1, args.calls)
    postgres = ScratchDatabases(args.postgres_url)
    try:
        spec = {
            **{k: server.hello[k] for k in ("base_url", "api_key", "agent_id", "batches")},
            "kind": "sync",
            "page_size": args.page_size,
            "concurrency": 1,
            "rate_cap": args.rate_cap,
            "streams": ["scheduled_calls", "calls"],
            "database_url": postgres.fresh(),
            "gc_threshold": None,
        }
        print(
            f"one batch of {args.calls:,} calls, both streams, pages of {args.page_size:,} "
            f"(created calls: at most 250), concurrency 1, cap {args.rate_cap:g} requests/s, "
            f"PostgreSQL {postgres.version}"
        )
        print(
            "| | records | requests | wall s | records/s | requests/s | CPU s: client, database |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name in ("first load", "re-sync, nothing changed"):
            r = in_child({**spec, "name": name})
            if r.get("failed"):
                raise SystemExit(f"{name}: {r['failed']}")
            wall = float(r["wall"])
            database = r.get("database_cpu_s")
            print(
                f"| {name} | {r['fetched']:,} | {r['pages']:,} | {wall:.2f} | "
                f"{r['fetched'] / wall:,.0f} | {r['pages'] / wall:.1f} | "
                f"{float(r['cpu_s']):.1f}, {'—' if database is None else f'{database:.1f}'} |"
            )
    finally:
        server.close()
        postgres.drop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
