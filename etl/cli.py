"""Command line: `ultravox-etl sync | migrate | demo`. Wiring only; the work is elsewhere.

Exit codes: 0 every batch synced; 1 a batch or the run failed (the other batches still
committed); 2 a usage or configuration error, before anything was written; 75 every batch
was being synced by another run (try later); 128+N stopped by signal N (SIGTERM: 143).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import FrameType

from etl import __version__
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
    commands.add_parser(
        "migrate", parents=[database, verbosity], help="bring the database schema to head"
    )
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose, args.quiet)
    try:
        with _signals_interrupt():
            if args.command == "sync":
                return _sync(args)
            if args.command == "migrate":
                return _migrate(args)
            from etl.demo import run_demo  # the demo pulls in the fake API; load it only here

            return run_demo(args.database_url)
    except ConfigError as exc:
        print(f"ultravox-etl: config error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DatabaseError as exc:
        print(f"ultravox-etl: database error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except (Interrupted, KeyboardInterrupt) as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
        print(f"ultravox-etl: stopped by {signal.Signals(signum).name}", file=sys.stderr)
        return 128 + int(signum)


def _sync(args: argparse.Namespace) -> int:
    config = load_config(args.config, database_url=args.database_url)
    log.info("database %s", masked(config.database_url))
    run = sync(
        config,
        args.batch,
        full=args.full,
        strict=True if args.strict else None,
        migrate=not args.no_migrate,
    )
    print_summary(run)
    return run.exit_code


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
    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    # Our own loggers speak at the chosen level; libraries only when something is wrong.
    logging.getLogger("etl").setLevel(level)
    logging.getLogger("alembic").setLevel(logging.WARNING)
