"""Command line: `ultravox-etl sync | migrate | runs | airflow-pool | demo | fake-api`; wiring.

Logging and progress (etl.report.logs, etl.report.progress), run history
(etl.report.history) and the metrics file (etl.report.metrics) live in their own modules.
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
from typing import NoReturn

from etl import __version__
from etl.airflow import DEFAULT_POOL, pool_set_command
from etl.config import API_KEY_ENV, DATABASE_URL_ENV, UUID_PATTERN, ConfigError, load_config
from etl.domain import EXIT_FAILED, EXIT_OK, EXIT_TRY_LATER, EXIT_USAGE
from etl.fake_api import cli as fake_api_cli
from etl.load.database import DatabaseError, describe, open_engine, upgrade_to_head
from etl.pipeline import Interrupted, sync
from etl.pipeline.targets import narrow_to_batches
from etl.report import history, logs, metrics, progress
from etl.report.results import RunResult
from etl.report.summary import summary_lines

log = logging.getLogger("etl")

PROGRAM = "ultravox-etl"


def exit_codes(*lines: tuple[int | str, str]) -> str:
    """The `exit codes:` block of a command's help, one code a line."""
    return "exit codes:\n" + "\n".join(f"  {code!s:<6} {meaning}" for code, meaning in lines)


_USAGE = (EXIT_USAGE, "usage or configuration error (one line on stderr); nothing was written")
_SIGNAL = ("128+N", "stopped by signal N (SIGINT 130, SIGTERM 143)")
SYNC_EXIT_CODES = exit_codes(
    (EXIT_OK, "every batch synced (or skipped as complete, or found removed)"),
    (
        EXIT_FAILED,
        "a batch or the run failed (the other batches committed), the API key was\n"
        "         refused, the API was unreachable, or the database could not be used",
    ),
    _USAGE,
    (EXIT_TRY_LATER, "nothing failed, but a batch was being synced by another run: try later"),
    _SIGNAL,
)
DATABASE_EXIT_CODES = exit_codes(
    (EXIT_OK, "done"),
    (EXIT_FAILED, "the database could not be used (the message names it, password hidden)"),
    _USAGE,
    _SIGNAL,
)
AIRFLOW_POOL_EXIT_CODES = exit_codes((EXIT_OK, "the command is printed (stdout)"), _USAGE)
DEMO_EXIT_CODES = exit_codes(
    (EXIT_OK, "every demo batch synced"),
    (EXIT_FAILED, "a batch failed, or the database could not be used"),
    _USAGE,
    _SIGNAL,
)
_DATABASE_HELP = f"""\
The database URL comes from --database-url, else ${DATABASE_URL_ENV}, else the
config's [database] url: sqlite:///file.db, postgresql://user:password@host/db, or
mysql+pymysql://user:password@host/db. Logs show it with the password hidden."""
_API_KEY_HELP = f"""\
The Ultravox API key comes from ${API_KEY_ENV}, never from a file or the command line."""


class UsageError(Exception):
    """A command line that argparse refused: `prog` is the (sub)command, `message` why."""

    def __init__(self, prog: str, message: str) -> None:
        super().__init__(f"{prog}: error: {message}")
        self.prog = prog
        self.message = message


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors end up as one line, without the usage block.

    cron mails stderr and log shippers read it line by line: argparse's usage block is
    noise there. `main` prints the error (as JSON under `--log-format json`) and exits 2;
    `--help` still shows the usage.
    """

    def error(self, message: str) -> NoReturn:
        raise UsageError(self.prog, message)


def build_parser() -> OneLineErrorParser:
    parser = OneLineErrorParser(
        prog=PROGRAM,
        description="Sync Ultravox scheduled call batches and the calls they created into "
        "SQLite, PostgreSQL or MariaDB/MySQL, for reporting with plain SQL.",
        epilog=f"Run `{PROGRAM} COMMAND --help` for each command.\n\n{SYNC_EXIT_CODES}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # Subcommand parsers are OneLineErrorParsers too (argparse uses the parent's class).
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    logging_options = OneLineErrorParser(add_help=False)
    logging_options.add_argument(
        "--log-format",
        choices=logs.LOG_FORMATS,
        default="text",
        help="text (default), or json: one JSON object per line on stderr, for log shippers",
    )
    verbosity = OneLineErrorParser(add_help=False)
    group = verbosity.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", action="store_true", help="log every page")
    group.add_argument(
        "-q", "--quiet", action="store_true", help="log only errors (the summary still prints)"
    )
    config_file = OneLineErrorParser(add_help=False)
    config_file.add_argument("--config", required=True, metavar="FILE", help="TOML config file")
    database = OneLineErrorParser(add_help=False, parents=[config_file])
    database.add_argument(
        "--database-url",
        metavar="URL",
        help=f"overrides [database] url and ${DATABASE_URL_ENV}",
    )

    def command(
        name: str,
        summary: str,
        description: str,
        parents: list[OneLineErrorParser],
        codes: str,
    ) -> OneLineErrorParser:
        return commands.add_parser(
            name,
            parents=parents,
            help=summary,
            description=description,
            epilog=codes,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    sync_cmd = command(
        "sync",
        "sync the configured batches",
        "Bring the schema to head, then list every scheduled call (and every call it\n"
        "created) of the configured batches and of the batches of the configured agents,\n"
        "and upsert them. One summary line per batch goes to stdout, logs to stderr.\n\n"
        f"{_API_KEY_HELP}\n{_DATABASE_HELP}",
        [database, verbosity, logging_options],
        SYNC_EXIT_CODES,
    )
    sync_cmd.add_argument(
        "--batch",
        action="append",
        type=_batch_id,
        metavar="BATCH_ID",
        help="sync only this batch (repeatable): a UUID in [[batches]] or listed for an agent",
    )
    sync_cmd.add_argument(
        "--full",
        action="store_true",
        help="also list batches that ended with everything stored final",
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
        type=_metrics_path,
        help="write Prometheus metrics of the run to PATH (atomically), "
        "e.g. for node_exporter's textfile collector; its folder must exist",
    )
    command(
        "migrate",
        "bring the database schema to head",
        "Apply every pending migration, one process at a time.\n\n"
        f"Needs no API key (${API_KEY_ENV}).\n{_DATABASE_HELP}",
        [database, logging_options],
        DATABASE_EXIT_CODES,
    )
    runs_cmd = command(
        "runs",
        "show the latest runs and what each did to each batch",
        "Read etl_runs, etl_batch_runs and etl_stream_runs, newest run first. Writes\n"
        "nothing: a database without runs is neither created nor migrated.\n\n"
        f"Needs no API key (${API_KEY_ENV}).\n{_DATABASE_HELP}",
        [database, logging_options],
        DATABASE_EXIT_CODES,
    )
    runs_cmd.add_argument(
        "--limit", type=_positive_int, default=10, metavar="N", help="runs to show (default 10)"
    )
    runs_cmd.add_argument("--json", action="store_true", help="print a JSON array instead")
    pool_cmd = command(
        "airflow-pool",
        "print the `airflow pools set` line sizing the Airflow DAG's pool",
        "Print the `airflow pools set` command that creates (or resizes) the pool the\n"
        "Airflow DAG's tasks share, sized from the config: [api] key_requests_per_second\n"
        "(Ultravox's limit per API key, default 200) divided by [api]\n"
        "max_requests_per_second (each task's own cap, default 20), rounded down. One slot\n"
        "a task: all workers together stay within the key's limit. Run it where the\n"
        "`airflow` command reaches Airflow's metadata database, e.g.\n"
        f'  eval "$({PROGRAM} airflow-pool --config etl.toml)"\n\n'
        f"Needs no API key (${API_KEY_ENV}) and no database.",
        [config_file, logging_options],
        AIRFLOW_POOL_EXIT_CODES,
    )
    pool_cmd.add_argument(
        "--name",
        default=DEFAULT_POOL,
        type=_pool_name,
        help="the pool's name, as given to ultravox_sync_dag(pool=...) (default: %(default)s)",
    )
    demo = command(
        "demo",
        "sync from a built-in fake Ultravox API into SQLite",
        "Start the fake Ultravox API on localhost, sync its three batches into a SQLite\n"
        "file and print calls per status and the outcome of each batch.\n\n"
        f"No account needed: ${API_KEY_ENV} is not read.",
        [verbosity, logging_options],
        DEMO_EXIT_CODES,
    )
    demo.add_argument(
        "--database-url",
        default="sqlite:///ultravox_etl_demo.db",
        metavar="URL",
        help="where the demo loads (default: %(default)s)",
    )
    fake_api = commands.add_parser(
        "fake-api",
        help="serve a fake Ultravox API to try the job against, or steer one",
        description=fake_api_cli.DESCRIPTION,
        epilog=fake_api_cli.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    fake_api_cli.add_arguments(fake_api)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _batch_id(text: str) -> str:
    if not UUID_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a batch id (a UUID)")
    return text.lower()


def _pool_name(text: str) -> str:
    if not text.strip() or len(text) > 256:  # what Airflow's pool table takes
        raise argparse.ArgumentTypeError("expected 1 to 256 characters, not only blanks")
    return text


def _metrics_path(text: str) -> Path:
    path = Path(text)
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder {path.parent} does not exist")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parse_arguments(build_parser(), arguments)
    except UsageError as exc:
        logs.configure()
        logs.use_format("json" if _asks_for_json_logs(arguments) else "text")
        logs.fatal(f"error: {exc.message}", program=exc.prog, event="usage_error")
        return EXIT_USAGE
    if args.command == "fake-api":
        return fake_api_cli.run(args)
    logs.configure(verbose=getattr(args, "verbose", False), quiet=getattr(args, "quiet", False))
    logs.use_format(args.log_format)
    try:
        with _signals_interrupt():
            if args.command == "sync":
                return _sync(args)
            if args.command == "migrate":
                return _migrate(args)
            if args.command == "runs":
                return _runs(args)
            if args.command == "airflow-pool":
                return _airflow_pool(args)
            from etl.demo import run_demo  # the demo pulls in the fake API; load it only here

            return run_demo(args.database_url)
    except ConfigError as exc:
        logs.fatal(f"config error: {exc}")
        return EXIT_USAGE
    except DatabaseError as exc:
        logs.fatal(f"database error: {exc}")
        return EXIT_FAILED
    except (Interrupted, KeyboardInterrupt) as exc:
        signum = _signal_of(exc)
        logs.fatal(f"stopped by {signal.Signals(signum).name}")
        return 128 + int(signum)
    except Exception as exc:
        if args.log_format != "json":
            raise  # a bug: Python's traceback says where
        # Under JSON logs the traceback too is one line: the `exception` field.
        logs.fatal(f"crashed: {type(exc).__name__}: {exc}", exc_info=exc)
        return EXIT_FAILED


def _parse_arguments(parser: argparse.ArgumentParser, arguments: list[str]) -> argparse.Namespace:
    """The parsed command line; an argument the chosen command does not take is that
    command's error (`ultravox-etl migrate: error: unrecognized arguments: -v`)."""
    args, unknown = parser.parse_known_args(arguments)
    if unknown:
        # The subparser's error, not the top-level parser's (which parse_args would raise).
        prog = f"{parser.prog} {args.command}"
        raise UsageError(prog, f"unrecognized arguments: {' '.join(unknown)}")
    return args


def _asks_for_json_logs(arguments: list[str]) -> bool:
    """Whether a command line argparse refused asked for JSON logs, so that its error line
    is JSON too. Read leniently: any spelling argparse accepts (`--log-format=json`, an
    abbreviation), anywhere on the line."""
    probe = OneLineErrorParser(add_help=False)
    probe.add_argument("--log-format")
    try:
        known, _ = probe.parse_known_args(arguments)
    except UsageError:  # e.g. --log-format without a value
        return False
    return bool(known.log_format == "json")


def _signal_of(exc: Interrupted | KeyboardInterrupt) -> int:
    return exc.signum if isinstance(exc, Interrupted) else int(signal.SIGINT)


def _sync(args: argparse.Namespace) -> int:
    config = load_config(args.config, database_url=args.database_url)
    metrics_file: Path | None = args.metrics_file
    engine = open_engine(config.database_url)  # a URL this job cannot use fails here, exit 2
    database = describe(engine)
    engine.dispose()
    if args.batch is not None:  # a batch nobody knows fails here, exit 2, nothing written
        config = narrow_to_batches(config, args.batch)
    log.info("database %s", database)
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
    config = load_config(
        args.config, database_url=args.database_url, require_api_key=False, require_batches=False
    )
    records = history.read_history(config.database_url, args.limit)
    if args.json:
        print(history.runs_as_json(records))
    else:
        for line in history.format_runs(records):
            print(line)
    return EXIT_OK


def _airflow_pool(args: argparse.Namespace) -> int:
    config = load_config(args.config, require_api_key=False, require_batches=False)
    print(pool_set_command(config.api, args.name, config.source))
    return EXIT_OK


def _migrate(args: argparse.Namespace) -> int:
    config = load_config(
        args.config, database_url=args.database_url, require_api_key=False, require_batches=False
    )
    engine = open_engine(config.database_url)
    try:
        upgrade_to_head(engine)
        where = describe(engine)
    finally:
        engine.dispose()
    print(f"schema of {where} is at head")
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
