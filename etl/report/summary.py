"""The lines a run prints to stdout when it ends (and `runs` prints of the runs before).

batch 0b7e4d52-…: succeeded: scheduled_calls pages=4 fetched=180/180 inserted=0 … ; calls …
run 7: succeeded: 3 of 3 batches synced
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from etl.domain import COUNT_NAMES
from etl.report.results import RunResult

StreamLine = tuple[str, Mapping[str, int | None] | None, str | None]
"""A stream's name, counts by name (None: not listed), and note."""


def counts_text(counts: Mapping[str, int | None]) -> str:
    """`pages=4 fetched=180/180 inserted=0 …`: every count, fetched against the API's total."""
    total = counts.get("api_total")
    parts = []
    for name in COUNT_NAMES:
        if name == "api_total":
            continue
        value = counts.get(name) or 0
        if name == "fetched":
            parts.append(f"fetched={value}/{'?' if total is None else total}")
        else:
            parts.append(f"{name}={value}")
    return " ".join(parts)


def batch_line(
    batch_id: str,
    status: str,
    streams: Sequence[StreamLine],
    *,
    note: str | None = None,
    error: str | None = None,
) -> str:
    """One batch's outcome: its status, then each stream's counts (and note)."""
    parts = []
    for name, counts, stream_note in streams:
        if counts is None:
            parts.append(f"{name} not listed ({stream_note})")
            continue
        text = f"{name} {counts_text(counts)}"
        parts.append(f"{text} ({stream_note})" if stream_note else text)
    line = f"batch {batch_id}: {status}"
    if parts:
        line += ": " + "; ".join(parts)
    if note:
        line += f" ({note})"
    if error:
        line += f"; error: {error}"
    return line


def summary_lines(run: RunResult) -> list[str]:
    """One line per batch, then one for the run."""
    lines = [
        batch_line(
            b.batch.batch_id,
            b.status.value,
            [(s.stream, s.counts.as_dict() if s.listed else None, s.note) for s in b.streams],
            note=b.note,
            error=b.error,
        )
        for b in run.batches
    ]
    run_line = (
        f"run {run.run_id}: {run.status.value}: "
        f"{len(run.synced)} of {len(run.batches)} batches synced"
    )
    if run.failed:
        run_line += f", {len(run.failed)} failed"
    if run.locked:
        run_line += f", {len(run.locked)} locked by another run"
    if run.error:
        run_line += f"; {run.error}"
    lines.append(run_line)
    return lines
