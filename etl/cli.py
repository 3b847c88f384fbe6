"""Command line: `ultravox-etl sync | migrate | runs | demo`. Wiring only; the work is elsewhere.

Exit codes: 0 every batch synced; 1 a batch or the run failed (the other batches still
committed); 2 a usage or configuration error, before anything was written; 75 every batch
was being synced by another run (try later); 128+N stopped by signal N (SIGTERM: 143).

Logging (etl.logs), progress (etl.progress), run history (etl.runs) and the metrics file
(etl.metrics) live in their own modules.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from etl import __version__, logs, metrics, progress, runs
from etl.config import ConfigError, load_config
from etl.load.database import DatabaseError, open_engine, upgrade_to_head
from etl.load.dialect import masked
from etl.pipeline import Interrupted, sync
from etl.report import EXIT_FAILED, EXIT_OK, EXIT_USAGE, RunResult, summary_lines

log = logging.getLogger("etl")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ultravox-etl",
        description="Sync Ultravox scheduled call batches into SQLite or PostgreSQL.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    verbosity = argparse.ArgumentParser(add_help=False)
    group = verbosity.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", help="log every page")
    group.add_argument(
        "-q", "--quiet", action="store_true", help="log only errors (the summary still prints)"
    )
    verbosity.add_argument(
        "--log-format",
        choices=logs.LOG_FORMATS,
        default="text",
        help="text (default) or json: one JSON object per line, for log shippers",
    )

    database = argparse.ArgumentParser(add_help=False)
    database.add_argument("--config", required=True, metavar="FILE", help="TOML config file")
    database.add_argument(
        "--database-url",
        metavar="URL",
        help="overrides [database] url and ULTRAVOX_ETL_DATABASE_URL",
    )

    sync_cmd = commands.add_parser(
        "sync", parents=[database, verbosity], help="sync the configured batches"
    )
    sync_cmd.add_argument(
        "--batch",
        action="append",
        metavar="BATCH_ID",
        help="sync only this batch (repeatable); it must be configured or listed for an agent",
    )
    sync_cmd.add_argument(
        "--full",
        action="store_true",
        help="list every batch, even those that ended with all calls final",
    )
    sync_cmd.add_argument("--strict", action="store_true", help="a rejected record fails its batch")
    sync_cmd.add_argument(
        "--no-migrate",
        action="store_true",
        help="refuse to run on a schema that is behind instead of migrating it",
    )
    sync_cmd.add_argument(
        "--metrics-file",
        metavar="PATH",
        type=Path,
        help="write Prometheus metrics of the run to PATH (atomically), "
        "e.g. for node_exporter's textfile collector",
    )
    commands.add_parser(
        "migrate", parents=[database, verbosity], help="bring the database schema to head"
    )
    runs_cmd = commands.add_parser(
        "runs",
        parents=[database, verbosity],
        help="show the latest runs and what each did to each batch",
    )
    runs_cmd.add_argument(
        "--limit", type=_positive_int, default=10, metavar="N", help="runs to show (default 10)"
    )
    runs_cmd.add_argument("--json", action="store_true", help="print a JSON array instead")
    demo = commands.add_parser(
        "demo", parents=[verbosity], help="sync from a built-in fake Ultravox API into SQLite"
    )
    demo.add_argument(
        "--database-url",
        default="sqlite:///ultravox_etl_demo.db",
        metavar="URL",
        help="where the demo loads (default: %(default)s)",
    )
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose, args.quiet)
    logs.use_format(args.log_format)
    try:
        with _signals_interrupt():
            if args.command == "sync":
                return _sync(args)
            if args.command == "migrate":
                return _migrate(args)
            if args.command == "runs":
                return _runs(args)
            from etl.demo import run_demo  # the demo pulls in the fake API; load it only here

            return run_demo(args.database_url)
    except ConfigError as exc:
        print(f"ultravox-etl: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DatabaseError as exc:
        print(f"ultravox-etl: database error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (Interrupted, KeyboardInterrupt) as exc:
        signum = _signal_of(exc)
        print(f"ultravox-etl: stopped by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + int(signum)


def _signal_of(exc: Interrupted | KeyboardInterrupt) -> int:
    return exc.signum if isinstance(exc, Interrupted) else int(signal.SIGINT)


def _sync(args: argparse.Namespace) -> int:
    config = load_config(args.config, database_url=args.database_url)
    metrics_file: Path | None = args.metrics_file
    if metrics_file is not None and not metrics_file.parent.is_dir():
        raise ConfigError(f"--metrics-file {metrics_file}: {metrics_file.parent} is not a folder")
    log.info("database %s", masked(config.database_url))
    reporter = progress.reporter_for(
        sys.stderr,
        quiet=args.quiet,
        log_format=args.log_format,
        handler=logs.console_handler(),
        max_lines=config.api.concurrency,
    )
    started = time.monotonic()
    try:
        run = sync(
            config,
            args.batch,
            full=args.full,
            strict=True if args.strict else None,
            migrate=not args.no_migrate,
            progress=reporter,
        )
    except (DatabaseError, Interrupted, KeyboardInterrupt) as exc:
        if metrics_file is not None:  # the run ended without a result: say so all the same
            code = EXIT_FAILED if isinstance(exc, DatabaseError) else 128 + _signal_of(exc)
            _write_metrics(
                lambda: metrics.write_failure_metrics(
                    metrics_file,
                    finished_at=datetime.now(UTC),
                    duration_seconds=time.monotonic() - started,
                    exit_code=code,
                )
            )
        raise
    finally:
        if reporter is not None:
            reporter.close()
    print_summary(run)
    logs.log_run_finished(run)
    code = run.exit_code
    if metrics_file is not None:
        written = _write_metrics(
            lambda: metrics.write_run_metrics(
                metrics_file,
                run,
                database_url=config.database_url,
                duration_seconds=time.monotonic() - started,
            )
        )
        if not written and code == EXIT_OK:
            code = EXIT_FAILED
    return code


def _write_metrics(write: Callable[[], object]) -> bool:
    """Write the metrics file; an error is reported, and the caller decides the exit code."""
    try:
        write()
    except OSError as exc:
        log.error("cannot write the metrics file: %s", exc, extra={"event": "metrics_failed"})
        return False
    return True


def _runs(args: argparse.Namespace) -> int:
    config = load_config(args.config, database_url=args.database_url, require_api_key=False)
    history = runs.read_history(config.database_url, args.limit)
    if args.json:
        print(runs.runs_as_json(history))
    else:
        for line in runs.format_runs(history):
            print(line)
    return EXIT_OK


def _migrate(args: argparse.Namespace) -> int:
    config = load_config(args.config, database_url=args.database_url, require_api_key=False)
    engine = open_engine(config.database_url)
    try:
        upgrade_to_head(engine)
    finally:
        engine.dispose()
    print(f"schema of {masked(engine.url)} is at head")
    return EXIT_OK


def print_summary(run: RunResult) -> None:
    for line in summary_lines(run):
        print(line, flush=True)


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM (Airflow task timeouts, cron wrappers) stops the run like Ctrl-C does."""

    def on_sigterm(signum: int, _frame: FrameType | None) -> None:
        raise Interrupted(signum)

    try:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread (e.g. called from a test harness thread)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _configure_logging(verbose: bool, quiet: bool) -> None:
    # Our own loggers speak at the chosen level; libraries only when something is wrong.
    logs.configure(verbose=verbose, quiet=quiet)
