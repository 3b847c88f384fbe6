"""The benchmark's fake Ultravox API: `etl.fake_api` in a process of its own, steered on stdin.

    python -m bench.fake_server --batches 10 --calls 20000 [--seed 0]

Serves the same generated batches as `python -m etl.fake_api` (ids derive from the seed), on a
free port of 127.0.0.1, in its own process, so the server's Python never competes with the
client's for one GIL. It prints one JSON line {"base_url", "api_key", "agent_id", "batches"},
then obeys one command per line on stdin, answering each with a line "ok …":

    latency SECONDS     every request waits that long first (the fake's latency knob)
    advance FRACTION    move that fraction of every batch's calls one status further
    quit                stop (so does the end of stdin)
"""

from __future__ import annotations

import argparse
import gc
import json
import sys

from etl.fake_api import FakeUltravox, add_generated_batches

API_KEY = "bench-api-key"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fake_server")
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--calls", type=int, default=20000, help="calls per batch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    fake = FakeUltravox(API_KEY, max_page_size=1000)
    # As `python -m etl.fake_api`: the same seed, the same ids.
    agent_id = add_generated_batches(fake, args.batches, args.calls, seed=args.seed)
    # The generated batches are millions of objects that live as long as the process: kept
    # out of the collector's walks, which otherwise cost up to 0.5 s of a created_calls page
    # at 100,000 calls a batch (under the fake's lock) and made the fetch limit the fake's.
    gc.freeze()
    base_url = fake.start()
    hello = {
        "base_url": base_url,
        "api_key": API_KEY,
        "agent_id": agent_id,
        "batches": list(fake.batches),
    }
    print(json.dumps(hello), flush=True)
    try:
        for line in sys.stdin:
            command, *rest = line.split()
            if command == "latency":
                fake.latency_seconds = float(rest[0])
                print(f"ok latency {fake.latency_seconds}", flush=True)
            elif command == "advance":
                # Seeds 1, 2, … in turn: every benchmark run takes the same steps.
                changed = sum(fake.advance_batches(float(rest[0])).values())
                print(f"ok advanced {changed}", flush=True)
            elif command == "quit":
                break
            else:
                print(f"error unknown command {command!r}", flush=True)
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
