"""Logging for unattended runs: human-readable lines by default, JSON lines for log shippers.

Log calls carry their structured fields through `extra` (see etl.pipeline): `run_id`,
`batch_id`, `event`, `counts` (totals) and `streams` (counts per stream). The JSON formatter
puts each one, when present, beside `timestamp` (ISO 8601, UTC), `level`, `logger` and
`message`, one object per line.

Nothing here adds a secret to a line: the API key is never passed to a log call, and
database URLs are logged masked by the code that logs them.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

from etl.report.results import RunResult

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")

STRUCTURED_FIELDS = ("run_id", "batch_id", "event", "counts", "streams")
"""Record attributes, set through `extra`, that a JSON line carries when a record has them."""

TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"

log = logging.getLogger("etl")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line.

    Hand-written rather than python-json-logger's formatter: that one puts every `extra`
    attribute of a record on the line (it can only be told which to leave out), where this
    one writes the STRUCTURED_FIELDS and nothing else, so a value passed to a log call for
    another purpose never reaches a log shipper; and its timestamp needs a subclass to take
    this shape (milliseconds, `Z`) all the same.
    """

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "timestamp": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in STRUCTURED_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        # default=str: a value no JSON type fits (a datetime, an enum) still gives a line.
        return json.dumps(line, ensure_ascii=False, default=str)


class ConsoleHandler(logging.StreamHandler[TextIO]):
    """A stream handler that lets a live display (the progress lines) step aside.

    `around` is called with a function that writes the record; the progress display clears
    its lines, calls it, and draws them again below the new log line.
    """

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.around: Callable[[Callable[[], None]], None] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        around = self.around
        if around is None:
            super().emit(record)
        else:
            around(lambda: super(ConsoleHandler, self).emit(record))


def formatter_for(log_format: LogFormat) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    return logging.Formatter(TEXT_FORMAT)


def configure(
    *, verbose: bool = False, quiet: bool = False, stream: TextIO | None = None
) -> ConsoleHandler:
    """Send log records to stderr: ours at the chosen level, libraries' only when wrong.

    Default INFO; `quiet` errors only (the summary still goes to stdout); `verbose` DEBUG,
    which adds a line per page.
    """
    level = logging.DEBUG if verbose else logging.ERROR if quiet else logging.INFO
    handler = ConsoleHandler(sys.stderr if stream is None else stream)
    handler.setFormatter(formatter_for("text"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    # Python warnings (a library's deprecation notice) become log records, so that under
    # JSON logs they too are JSON lines rather than free text on stderr.
    logging.captureWarnings(True)
    logging.getLogger("etl").setLevel(level)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return handler


def console_handler() -> ConsoleHandler | None:
    """The handler configure() installed, if it is still in place."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, ConsoleHandler):
            return handler
    return None


def use_format(log_format: LogFormat) -> None:
    """Switch the console handler to `log_format` (text or json)."""
    handler = console_handler()
    if handler is not None:
        handler.setFormatter(formatter_for(log_format))


def fatal(
    message: str,
    *,
    program: str = "ultravox-etl",
    event: str = "fatal",
    exc_info: BaseException | None = None,
) -> None:
    """The line that ends a command which could not go on: `program: message` on stderr,
    or, under JSON logs, one JSON object like every other line (`event` says which kind).

    `exc_info`: a crash, whose traceback goes in the JSON line's `exception` field.
    """
    handler = console_handler()
    if handler is not None and isinstance(handler.formatter, JsonFormatter):
        log.critical("%s: %s", program, message, exc_info=exc_info, extra={"event": event})
    else:
        print(f"{program}: {message}", file=sys.stderr)


def run_totals(result: RunResult) -> dict[str, int | None]:
    """The run's counts added up over its batches and streams, plus batches per status."""
    totals: dict[str, int | None] = {"batches": len(result.batches)}
    totals.update(result.totals().as_dict())
    del totals["api_total"]
    for status, count in result.batches_by_status().items():
        if count:
            totals[f"batches_{status}"] = count
    return totals


def log_run_finished(result: RunResult, logger: logging.Logger = log) -> None:
    """One line that closes the run, with its totals: INFO if it went well, else WARNING."""
    level = logging.INFO if result.exit_code == 0 else logging.WARNING
    logger.log(
        level,
        "run %d %s: %d batches, %d records fetched",
        result.run_id,
        result.status.value,
        len(result.batches),
        result.totals().fetched,
        extra={
            "run_id": result.run_id,
            "event": "run_finished",
            "counts": run_totals(result),
            "streams": {name: c.as_dict() for name, c in result.stream_totals().items()},
        },
    )
