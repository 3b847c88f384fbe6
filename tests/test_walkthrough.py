"""The README's walk-through, step by step through the CLI: the fake Ultravox API served by
`ultravox-etl fake-api` in a child process, its printed config saved, a sync, `advance`
(statuses move on, calls get created), a sync, `vanish` (calls leave), a sync, `runs`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.conftest import CliResult, rows, run_console_script

FAKE_KEY = {"ULTRAVOX_API_KEY": "fake-api-key"}  # the key the fake accepts by default
CALLS_PER_BATCH = 60


@dataclass
class ServedFake:
    url: str
    printed: list[str]

    @property
    def config(self) -> str:
        """The config the fake printed: from `[api]` to `# end of config` (as the README's
        `sed` saves it)."""
        start = self.printed.index("[api]")
        end = self.printed.index("# end of config")
        return "\n".join(self.printed[start : end + 1]) + "\n"

    @property
    def batch_ids(self) -> list[str]:
        return [ln.split()[1] for ln in self.printed if re.match(r"batch_id \S+  calls=", ln)]


@pytest.fixture
def served_fake() -> Iterator[ServedFake]:
    script = str(Path(sys.executable).with_name("ultravox-etl"))
    proc = subprocess.Popen(
        [script, "fake-api", "--port", "0", "--batches", "2", "--calls", str(CALLS_PER_BATCH)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        printed: list[str] = []
        while not printed or printed[-1] != "Press Ctrl-C to stop.":
            line = proc.stdout.readline()
            assert line, f"the fake ended early: {printed}"
            printed.append(line.rstrip("\n"))
        found = re.match(r"Fake Ultravox API on (http://127\.0\.0\.1:\d+) ", printed[0])
        assert found, printed[0]
        yield ServedFake(found.group(1), printed)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def cli(tmp_path: Path, *args: str) -> CliResult:
    result = run_console_script(*args, env=FAKE_KEY, cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    return result


def stream_counts(summary: str, batch_id: str, stream: str) -> dict[str, str]:
    """The counts of one stream in a batch's summary line: `pages=2 fetched=60/60 …`."""
    (line,) = [ln for ln in summary.splitlines() if ln.startswith(f"batch {batch_id}: ")]
    part = next(p for p in line.split(": ", 2)[2].split("; ") if p.startswith(f"{stream} "))
    return dict(pair.split("=") for pair in part.split()[1:])


def test_the_walkthrough_through_the_cli(
    served_fake: ServedFake, engine: Engine, database_url: str, tmp_path: Path
) -> None:
    fake = served_fake
    assert f"  ultravox-etl fake-api advance --url {fake.url} [--fraction 0.25] [--batch ID]" in (
        fake.printed
    )
    config = tmp_path / "fake.toml"
    config.write_text(fake.config)
    first_batch, second_batch = fake.batch_ids
    sync = ("sync", "-q", "--config", str(config), "--database-url", database_url)

    # 1. The first sync loads every scheduled call and the calls created so far.
    first = cli(tmp_path, *sync)
    assert first.stdout.splitlines()[-1] == "run 1: succeeded: 2 of 2 batches synced"
    assert rows(engine, "SELECT count(*) FROM scheduled_calls") == [(2 * CALLS_PER_BATCH,)]
    (created,) = rows(engine, "SELECT count(*) FROM calls")[0]
    assert created > 0

    # 2. Time moves on: statuses change, in place, each change recorded; new calls appear.
    steered = cli(tmp_path, "fake-api", "advance", "--url", fake.url, "--fraction", "0.3")
    changed = json.loads(steered.stdout)["changed"]
    assert set(changed) == {first_batch, second_batch} and all(changed.values())
    second = cli(tmp_path, *sync)
    for batch_id in (first_batch, second_batch):
        counts = stream_counts(second.stdout, batch_id, "scheduled_calls")
        assert (counts["inserted"], counts["updated"]) == ("0", str(changed[batch_id]))
    assert rows(engine, "SELECT count(*) FROM scheduled_calls") == [(2 * CALLS_PER_BATCH,)]
    changes = rows(
        engine,
        "SELECT count(*) FROM scheduled_call_status_changes WHERE from_status IS NOT NULL",
    )
    assert changes == [(sum(changed.values()),)]
    (created_now,) = rows(engine, "SELECT count(*) FROM calls")[0]
    assert created_now > created
    placed = rows(
        engine,
        "SELECT count(*) FROM scheduled_calls s JOIN calls c ON c.call_id = s.call_id",
    )
    assert placed == [(created_now,)]  # every created call is one scheduled call's outcome

    # 3. Five calls vanish from the first batch: the next sync marks them removed.
    cli(tmp_path, "fake-api", "vanish", "--url", fake.url, "--batch", first_batch, "--count", "5")
    third = cli(tmp_path, *sync)
    assert stream_counts(third.stdout, first_batch, "scheduled_calls")["removed"] == "5"
    removed = rows(
        engine,
        "SELECT batch_id, count(*) FROM scheduled_calls WHERE removed_at IS NOT NULL "
        "GROUP BY batch_id",
    )
    assert [tuple(r) for r in removed] == [(first_batch, 5)]

    # 4. `runs` tells the story, newest first.
    history = cli(tmp_path, "runs", "--config", str(config), "--database-url", database_url)
    runs = [line for line in history.stdout.splitlines() if line.startswith("run ")]
    assert [line.split(":")[0] for line in runs] == ["run 3", "run 2", "run 1"]
    assert all(": succeeded started " in line for line in runs)
    latest_run = history.stdout.split("\nrun 2: ")[0]
    batch_lines = "\n".join(line.strip() for line in latest_run.splitlines())
    assert stream_counts(batch_lines, first_batch, "scheduled_calls")["removed"] == "5"
