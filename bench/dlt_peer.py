"""The benchmark's peer: the same scheduled calls loaded by dlt's `rest_api` source.

Runs INSIDE the peer's own virtualenv (bench/dlt_peer_runner.py makes it, `dlt[postgres]`
pinned there); dlt is never a dependency of the project, nor importable from its virtualenv.

    bench/.dlt-venv/bin/python bench/dlt_peer.py --base-url URL --api-key KEY \
        --agent-id AGENT --batches ID1,ID2,... --database-url postgresql://…/db

Every scheduled call of the given batches is loaded into `<dataset>.scheduled_calls` of that
(empty) PostgreSQL database, set up for speed:

- one `rest_api` resource per batch, all `parallelized`, on `--extract-workers` threads;
- the `scheduled_calls` endpoint paged by its cursor: a `JSONResponseCursorPaginator` reads the
  `next` link at JSON path `next` and sends only that link's `cursor` query value back (as our
  job does), with `pageSize` as a query parameter and the key in the `X-API-Key` header;
- `--normalize-workers` processes and `--load-workers` threads, extract and normalize files
  rotated every `--file-max-items` rows so that both pools have files to share out, and not
  gzipped (dlt's default: a fifth of its CPU time here);
- the `csv` loader file format, which dlt's postgres destination loads with `COPY … FROM STDIN`
  (its default, `insert_values`, sends INSERT statements);
- a client-side request rate cap (`--max-requests-per-second`; dlt has none of its own), so
  that the peer runs under the benchmark's cap.

Set up before the clock starts: imports, the pipeline, the source, the API's `total` of every
batch (the calls served) and a one-row load into a `peer_setup` table, which creates the
dataset and dlt's own tables. The clock runs around `pipeline.run` alone. Then the rows in
`scheduled_calls` are counted: unless they equal the calls served, the exit status is 1.
One JSON line goes to stdout: wall seconds, rows loaded, calls served, dlt's time per step.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

DATASET = "ultravox"
TABLE = "scheduled_calls"


class RateCap:
    """At most `per_second` requests a second, across every thread (0: no cap)."""

    def __init__(self, per_second: float = 0.0) -> None:
        self._lock = threading.Lock()
        self._next = 0.0
        self.interval = 0.0
        self.set(per_second)

    def set(self, per_second: float) -> None:
        self.interval = 1.0 / per_second if per_second > 0 else 0.0

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self.interval
        if slot > now:
            time.sleep(slot - now)


RATE_CAP = RateCap()  # set in main(); module-level so that dlt's config copies share it


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dlt_peer.py", description=__doc__.split("\n")[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--agent-id", required=True)
    parser.add_argument("--batches", required=True, help="batch ids, comma-separated")
    parser.add_argument("--database-url", required=True, help="an empty PostgreSQL database")
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--extract-workers", type=int, default=4)
    parser.add_argument("--normalize-workers", type=int, default=2)
    parser.add_argument("--load-workers", type=int, default=4)
    parser.add_argument("--file-max-items", type=int, default=25_000)
    parser.add_argument("--max-requests-per-second", type=float, default=0.0, help="0: no cap")
    parser.add_argument(
        "--loader-file-format",
        default="csv",
        choices=("csv", "insert_values"),
        help="csv: COPY … FROM STDIN (default); insert_values: dlt's default, INSERT statements",
    )
    parser.add_argument(
        "--max-table-nesting",
        type=int,
        default=None,
        help="dlt's nesting limit (default: dlt's own, nested objects flattened into columns)",
    )
    return parser.parse_args(argv)


def configure_dlt(args: argparse.Namespace, workdir: str) -> None:
    """dlt reads its settings from the environment: set them before any of it resolves."""
    os.environ.update(
        {
            "RUNTIME__DLTHUB_TELEMETRY": "false",  # no network, and nothing to report
            "RUNTIME__LOG_LEVEL": "WARNING",
            "DLT_DATA_DIR": workdir,
            "EXTRACT__WORKERS": str(args.extract_workers),
            "EXTRACT__MAX_PARALLEL_ITEMS": str(max(20, 2 * args.extract_workers)),
            "NORMALIZE__WORKERS": str(args.normalize_workers),
            "LOAD__WORKERS": str(args.load_workers),
            "DATA_WRITER__FILE_MAX_ITEMS": str(args.file_max_items),
            # dlt gzips every extract and normalize file by default: a fifth of its CPU here
            "DATA_WRITER__DISABLE_COMPRESSION": "true",
        }
    )


def served_calls(args: argparse.Namespace, batches: list[str]) -> int:
    """The API's `total` of every batch: what a complete load must hold."""
    import requests

    total = 0
    with requests.Session() as session:
        for batch in batches:
            response = session.get(
                f"{args.base_url}/api/agents/{args.agent_id}/scheduled_batches/{batch}"
                "/scheduled_calls",
                params={"pageSize": 1},
                headers={"X-API-Key": args.api_key},
                timeout=60,
            )
            response.raise_for_status()
            total += int(response.json()["total"])
    return total


def dlt_credentials(url: str) -> str:
    """The database URL as dlt's PostgreSQL credentials take it: a plain `postgresql://`
    scheme (no SQLAlchemy `+driver`), and a password, which dlt insists on: a URL without one
    (trust or peer authentication, ~/.pgpass) gets a placeholder such a server never asks for."""
    parts = urlsplit(url)
    parts = parts._replace(scheme=parts.scheme.split("+", 1)[0])
    if parts.password is None and "@" in parts.netloc:
        user, host = parts.netloc.rsplit("@", 1)
        parts = parts._replace(netloc=f"{user}:unused@{host}")
    return parts.geturl()


def build_source(args: argparse.Namespace, batches: list[str]) -> Any:
    from dlt.common.configuration import configspec
    from dlt.sources.helpers.rest_client.auth import APIKeyAuth
    from dlt.sources.helpers.rest_client.paginators import JSONResponseCursorPaginator
    from dlt.sources.rest_api import rest_api_source
    from requests import PreparedRequest, Response

    class NextLinkCursor(JSONResponseCursorPaginator):
        """The cursor of the `next` link (a whole URL at JSON path `next`), sent as `cursor`."""

        def update_state(self, response: Response, data: list[Any] | None = None) -> None:
            super().update_state(response, data)
            link = self._next_reference
            if link is not None:
                cursors = parse_qs(urlsplit(link).query).get("cursor")
                if not cursors or not cursors[0]:
                    raise ValueError(f"next link without a cursor: {link!r}")
                self._next_reference = cursors[0]

    @configspec
    class CappedAPIKeyAuth(APIKeyAuth):
        """The API key header, once the rate cap allows the request (every page's request
        is prepared, so authenticated, just before it is sent)."""

        def __call__(self, request: PreparedRequest) -> PreparedRequest:
            RATE_CAP.wait()
            return super().__call__(request)

    path = "api/agents/{agent}/scheduled_batches/{batch}/scheduled_calls"
    config: dict[str, Any] = {
        "client": {
            "base_url": args.base_url,
            "auth": CappedAPIKeyAuth(name="X-API-Key", api_key=args.api_key, location="header"),
            "paginator": NextLinkCursor(cursor_path="next", cursor_param="cursor"),
        },
        "resource_defaults": {
            "table_name": TABLE,
            "write_disposition": "append",
            "parallelized": True,
            "endpoint": {"data_selector": "results", "params": {"pageSize": args.page_size}},
        },
        "resources": [
            {
                "name": f"calls_{number:03d}",
                "endpoint": {"path": path.format(agent=args.agent_id, batch=batch)},
            }
            for number, batch in enumerate(batches)
        ],
    }
    return rest_api_source(
        config,  # type: ignore[arg-type]
        name="ultravox",
        max_table_nesting=args.max_table_nesting,
        parallelized=True,
    )


def cpu_seconds() -> float:
    """User and system CPU of this process and its finished children (normalize workers)."""
    own, children = (
        resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def setup_row() -> Iterator[dict[str, Any]]:
    yield {"peer": "dlt", "started_at": time.time()}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    batches = [b for b in args.batches.split(",") if b]
    RATE_CAP.set(args.max_requests_per_second)
    with tempfile.TemporaryDirectory(prefix="dlt-peer-") as workdir:
        configure_dlt(args, workdir)
        import dlt

        served = served_calls(args, batches)
        pipeline = dlt.pipeline(
            pipeline_name="ultravox_peer",
            pipelines_dir=workdir,
            destination=dlt.destinations.postgres(credentials=dlt_credentials(args.database_url)),
            dataset_name=DATASET,
        )
        source = build_source(args, batches)
        # The dataset, dlt's own tables and its connections: made before the clock starts.
        pipeline.run(
            dlt.resource(setup_row, name="peer_setup"), loader_file_format=args.loader_file_format
        ).raise_on_failed_jobs()

        cpu_before = cpu_seconds()
        start = time.perf_counter()
        info = pipeline.run(source, loader_file_format=args.loader_file_format)
        wall = time.perf_counter() - start
        cpu = cpu_seconds() - cpu_before
        info.raise_on_failed_jobs()

        with pipeline.sql_client() as client:
            count = f"SELECT count(*) FROM {DATASET}.{TABLE}"  # noqa: S608 - constants
            rows = int(client.execute_sql(count)[0][0])
            tables = sorted(
                str(r[0])
                for r in client.execute_sql(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = %s",
                    DATASET,
                )
            )
        steps = {
            step.step: round((step.finished_at - step.started_at).total_seconds(), 3)
            for step in (pipeline.last_trace.steps if pipeline.last_trace else [])
            if step.finished_at is not None and step.step in ("extract", "normalize", "load")
        }
    result = {
        "wall": wall,
        "rows": rows,
        "served": served,
        "fetched": rows,  # what bench/run.py checks against the calls it asked for
        "steps": steps,
        "cpu_s": round(cpu, 2),
        "tables": len([t for t in tables if t.startswith(TABLE)]),
        "dlt": dlt.__version__,
        "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "children_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "failed": [] if rows == served else [f"loaded {rows} rows, the API served {served}"],
    }
    print(json.dumps(result), flush=True)
    return 0 if rows == served else 1


if __name__ == "__main__":
    sys.exit(main())
