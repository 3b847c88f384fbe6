"""The fake's command: serve generated batches, or steer a fake that is already serving.

    python -m etl.fake_api [serve] [--port 8765] [--batches 3] [--calls 1000] [...]
    python -m etl.fake_api advance [--fraction 0.25] [--batch ID] [--url URL]
    python -m etl.fake_api vanish --batch ID [--count N | --call-id ID] [--url URL]
    python -m etl.fake_api state [--url URL]

The main command line offers the same as `ultravox-etl fake-api`: it adds these arguments
to its subcommand with `add_arguments` and hands the parsed namespace to `run`. The actions
share one flat set of options (so `serve`, the default, needs no word); an option that does
not apply to the chosen action is refused rather than ignored.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

from etl.fake_api import control
from etl.fake_api.scheduled_calls import generate_calls, seeded_uuid
from etl.fake_api.server import FakeUltravox

ACTIONS = ("serve", "advance", "vanish", "state")
DEFAULT_PORT = 8765

# Each option's default; an option off its default must belong to the chosen action.
_DEFAULTS: dict[str, Any] = {
    "port": DEFAULT_PORT,
    "batches": 3,
    "calls": 1000,
    "api_key": "fake-api-key",
    "agent_id": None,
    "seed": None,
    "latency": 0.0,
    "default_page_size": 100,
    "max_page_size": 1000,
    "url": f"http://127.0.0.1:{DEFAULT_PORT}",
    "fraction": 0.25,
    "batch": None,
    "count": None,
    "call_id": None,
}
_OPTIONS_OF = {
    "serve": {
        "port",
        "batches",
        "calls",
        "api_key",
        "agent_id",
        "seed",
        "latency",
        "default_page_size",
        "max_page_size",
    },
    "advance": {"url", "fraction", "batch", "seed"},
    "vanish": {"url", "batch", "count", "call_id"},
    "state": {"url"},
}

DESCRIPTION = (
    "A fake Ultravox API on 127.0.0.1, to try the job without an account: serve generated "
    "batches, or steer one that runs (move statuses forward, make calls vanish) and watch "
    "each sync pick up the changes."
)
EPILOG = """\
examples:
  %(prog)s --batches 3 --calls 1000
      serve until Ctrl-C; prints the ids and a config for ultravox-etl
  %(prog)s advance --fraction 0.3
      one step of time for every batch: the previous step's calls get billed,
      30%% of the calls move one status further
  %(prog)s vanish --batch ID --count 5
      5 scheduled calls leave the middle of the batch
  %(prog)s vanish --batch ID --call-id ID
      one created call is deleted
  %(prog)s vanish --batch ID
      the batch is deleted
  %(prog)s state
      every batch: calls per status, created calls, billing pending

advance, vanish and state use the running fake's control endpoints (no API key):
  POST /_fake/advance  {"fraction": F, "batch": ID?, "seed": N?}
  POST /_fake/vanish   {"batch": ID, "calls": N? | "callId": ID?}
  GET  /_fake/state

exit codes:
  0      served until Ctrl-C, or the fake did what it was asked
  1      no fake answers at --url, or it refused the request (the message says why)
  2      usage error: an option that does not fit the action
"""


def build_parser(prog: str = "python -m etl.fake_api") -> argparse.ArgumentParser:
    """The command's own parser (for `python -m etl.fake_api`)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the command's arguments to `parser` (e.g. the `fake-api` subparser of the main
    command line); `run` takes the namespace it parses."""
    parser.add_argument(
        "action",
        nargs="?",
        choices=ACTIONS,
        default="serve",
        help="serve (default): serve generated batches until Ctrl-C; advance, vanish, "
        "state: steer the fake running at --url",
    )
    serve = parser.add_argument_group("serve")
    serve.add_argument(
        "--port",
        type=int,
        default=_DEFAULTS["port"],
        help="port on 127.0.0.1; 0 picks a free one (default %(default)s)",
    )
    serve.add_argument(
        "--batches", type=int, default=_DEFAULTS["batches"], help="batches (default %(default)s)"
    )
    serve.add_argument(
        "--calls",
        type=int,
        default=_DEFAULTS["calls"],
        help="scheduled calls per batch (default %(default)s)",
    )
    serve.add_argument(
        "--api-key",
        default=_DEFAULTS["api_key"],
        help="the X-API-Key the fake accepts (default %(default)s)",
    )
    serve.add_argument(
        "--agent-id", help="the agent owning the batches (default: a UUID derived from --seed)"
    )
    serve.add_argument(
        "--latency",
        type=float,
        default=_DEFAULTS["latency"],
        help="seconds every API request waits first (default %(default)s)",
    )
    serve.add_argument(
        "--default-page-size",
        type=int,
        default=_DEFAULTS["default_page_size"],
        help="page size when a request names none (default %(default)s)",
    )
    serve.add_argument(
        "--max-page-size",
        type=int,
        default=_DEFAULTS["max_page_size"],
        help="largest page served, whatever pageSize asks (default %(default)s)",
    )
    both = parser.add_argument_group("serve and advance")
    both.add_argument(
        "--seed",
        type=int,
        help="serve: the seed of the generated ids and calls (default 0); advance: the "
        "step's seed (default: the fake's step counter, so each step differs)",
    )
    steer = parser.add_argument_group("advance, vanish, state")
    steer.add_argument(
        "--url",
        type=_http_url,
        default=_DEFAULTS["url"],
        help="base URL of the running fake (default %(default)s)",
    )
    steer.add_argument(
        "--fraction",
        type=float,
        default=_DEFAULTS["fraction"],
        help="advance: the share of each batch's calls that move one status further "
        "(default %(default)s)",
    )
    steer.add_argument(
        "--batch",
        metavar="BATCH_ID",
        help="advance: only this batch (default: every batch); vanish: the batch (required)",
    )
    steer.add_argument(
        "--count",
        type=int,
        metavar="N",
        help="vanish: N scheduled calls leave the middle of --batch",
    )
    steer.add_argument(
        "--call-id",
        metavar="CALL_ID",
        help="vanish: this created call of --batch is deleted (a retention policy)",
    )


def run(args: argparse.Namespace) -> int:
    """Carry out the parsed command; returns the exit code (2: options that do not fit)."""
    misplaced = [
        name
        for name, default in _DEFAULTS.items()
        if name not in _OPTIONS_OF[args.action] and getattr(args, name) != default
    ]
    if misplaced:
        flags = ", ".join("--" + name.replace("_", "-") for name in misplaced)
        return _usage_error(f"{flags}: not an option of {args.action}")
    if args.action == "serve":
        return _serve(args)
    if args.action == "advance":
        params: dict[str, Any] = {"fraction": args.fraction}
        if args.batch is not None:
            params["batch"] = args.batch
        if args.seed is not None:
            params["seed"] = args.seed
        return _steer(args.url, "advance", params)
    if args.action == "vanish":
        if args.batch is None:
            return _usage_error("vanish needs --batch")
        if args.count is not None and args.call_id is not None:
            return _usage_error("vanish takes --count or --call-id, not both")
        params = {"batch": args.batch}
        if args.count is not None:
            params["calls"] = args.count
        if args.call_id is not None:
            params["callId"] = args.call_id
        return _steer(args.url, "vanish", params)
    return _steer(args.url, "state", None)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m etl.fake_api ARGS`."""
    return run(build_parser().parse_args(argv))


def add_generated_batches(
    fake: FakeUltravox,
    batches: int,
    calls_per_batch: int,
    *,
    seed: int = 0,
    agent_id: str | None = None,
) -> str:
    """Give `fake` batches of generated calls, all of one agent; returns the agent id.

    The ids derive from `seed`, so every run with the same seed serves the same batches (a
    config written for one run keeps working, and benchmark runs compare).
    """
    rng = random.Random(seed)
    agent_id = agent_id or seeded_uuid(rng)
    for _ in range(batches):
        batch_id = seeded_uuid(rng)
        fake.add_batch(agent_id, batch_id, generate_calls(batch_id, calls_per_batch, seed=seed))
    return agent_id


def _serve(args: argparse.Namespace) -> int:
    fake = FakeUltravox(
        args.api_key,
        latency_seconds=args.latency,
        max_page_size=args.max_page_size,
        default_page_size=args.default_page_size,
    )
    agent_id = add_generated_batches(
        fake, args.batches, args.calls, seed=args.seed or 0, agent_id=args.agent_id
    )
    # The generated batches live as long as the process: out of the collector's walks,
    # which at large batches cost a listing page up to half a second.
    gc.freeze()
    base_url = fake.start(port=args.port)
    for line in _serving_lines(fake, base_url, agent_id):
        print(line, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


def _serving_lines(fake: FakeUltravox, base_url: str, agent_id: str) -> list[str]:
    """What `serve` prints: where it listens, the ids, a config to sync from it, how to
    steer it."""
    lines = [
        f"Fake Ultravox API on {base_url}  (X-API-Key: {fake.api_key})",
        f"agent_id {agent_id}",
        *(f"batch_id {b.batch_id}  calls={len(b.calls)}" for b in fake.batches.values()),
        "",
        "# ultravox-etl config for this fake: save it as fake.toml and run",
        f"#   ULTRAVOX_API_KEY={fake.api_key} ultravox-etl sync --config fake.toml",
        "[api]",
        f'base_url = "{base_url}"',
        "",
        "[database]",
        'url = "sqlite:///ultravox_etl_fake.db"',
    ]
    for batch in fake.batches.values():
        lines += ["", "[[batches]]", f'agent_id = "{agent_id}"', f'batch_id = "{batch.batch_id}"']
    command = "ultravox-etl fake-api"
    url = "" if base_url == _DEFAULTS["url"] else f" --url {base_url}"
    lines += [
        "# end of config",
        "",
        "Steer it from another shell:",
        f"  {command} advance{url} [--fraction 0.25] [--batch ID]",
        f"  {command} vanish{url} --batch ID [--count N | --call-id ID]",
        f"  {command} state{url}",
        "Press Ctrl-C to stop.",
    ]
    return lines


def _steer(url: str, action: str, params: dict[str, Any] | None) -> int:
    """Send one control request to the fake at `url`; print its JSON answer."""
    request = urllib.request.Request(  # noqa: S310 - _http_url admits http(s) URLs only
        f"{url.rstrip('/')}{control.PREFIX}{action}",
        data=None if params is None else json.dumps(params).encode("utf-8"),
        headers={"Content-Type": "application/json"},
        method="GET" if params is None else "POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 - as above
            answer = json.load(response)
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode("utf-8", "replace")
        print(f"fake API at {url}: {action}: HTTP {exc.code}: {detail}", file=sys.stderr)
        return 1
    except urllib.error.URLError as exc:
        print(f"no fake API answers at {url}: {exc.reason}", file=sys.stderr)
        return 1
    print(json.dumps(answer, indent=2))
    return 0


def _usage_error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _http_url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"expected an http:// URL, got {text!r}")
    return text
