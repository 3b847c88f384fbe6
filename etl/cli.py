"""Command line: `ultravox-etl sync | migrate | demo`. Wiring only; the work is elsewhere.

Exit codes: 0 every batch synced; 1 a batch or the run failed (the other batches still
committed); 2 a usage or configuration error, before anything was written.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Engine

from etl import __version__
from etl.config import ConfigError, load_config
from etl.load.database import (
    DatabaseError,
    SchemaBehind,
    open_engine,
    require_head,
    upgrade_to_head,
)
from etl.load.dialect import masked
from etl.report import RunResult, summary_lines
from etl.sync import run_sync

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

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
    group.add_argument("-q", "--quiet", action="store_true", help="log only errors")

    database = argparse.ArgumentParser(add_help=False)
    database.add_argument("--config", required=True, metavar="FILE", help="TOML config file")
    database.add_argument(
        "--database-url",
        metavar="URL",
        help="overrides [database] url and ULTRAVOX_ETL_DATABASE_URL",
    )

    sync = commands.add_parser(
        "sync", parents=[database, verbosity], help="sync the configured batches"
    )
    sync.add_argument(
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


def _sync(args: argparse.Namespace) -> int:
    config = load_config(args.config, database_url=args.database_url)
    engine = open_engine(config.database_url)
    try:
        log.info("database %s", masked(engine.url))
        if args.no_migrate:
            _refuse_missing_sqlite_file(engine)
            require_head(engine)
        else:
            upgrade_to_head(engine)
        run = run_sync(config, engine)
    finally:
        engine.dispose()
    print_summary(run)
    return exit_code(run)


def _refuse_missing_sqlite_file(engine: Engine) -> None:
    """With --no-migrate, refuse a SQLite file that does not exist before connecting to it.

    Connecting would create the file (the WAL pragma writes its header), so a run refused for
    its missing schema would still leave a stray database behind.
    """
    url = engine.url
    if engine.dialect.name != "sqlite" or url.query.get("uri"):
        return
    if url.database and url.database != ":memory:" and not Path(url.database).exists():
        raise SchemaBehind(
            f"{masked(url)} does not exist; run `ultravox-etl migrate` or drop --no-migrate"
        )


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
        print(line)


def exit_code(run: RunResult) -> int:
    return EXIT_FAILED if run.error or run.failed else EXIT_OK


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
