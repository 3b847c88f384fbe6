"""The benchmark's optional peer, P: dlt's `rest_api` source over the same fake API.

bench/run.py calls this module; it keeps everything about the peer in one place: its
virtualenv (dlt is never a dependency of the project), the decision to run it, the run itself
(bench/dlt_peer.py, in that virtualenv) and its lines in the report.

    --dlt       run the peer; make its virtualenv first if it is missing (pip, from PyPI)
    --no-dlt    never run it
    (neither)   run it when its virtualenv is there and current, else skip it with a note

`--smoke` never makes the virtualenv (CI has neither network nor dlt): there the peer runs only
if its virtualenv is already there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
REQUIREMENT = "dlt[postgres]==1.31.0"
"""The pinned peer: bump it here, and the next run with `--dlt` (or auto) reinstalls."""
DEFAULT_VENV = ROOT / "bench" / ".dlt-venv"  # git-ignored
SCRIPT = ROOT / "bench" / "dlt_peer.py"
MARKER = ".peer-requirement"  # in the virtualenv: what was installed there
NAME = "P"
WHAT = "dlt rest_api → fresh PostgreSQL (peer)"
NORMALIZE_WORKERS = 2  # the machine's cores
LOAD_WORKERS = 4


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--dlt",
        dest="dlt",
        action="store_const",
        const=True,
        default=None,
        help="run the dlt peer (P), making its virtualenv first if needed; "
        "default: run it if its virtualenv exists",
    )
    group.add_argument(
        "--no-dlt", dest="dlt", action="store_const", const=False, help="never run the peer"
    )
    parser.add_argument(
        "--dlt-venv",
        type=Path,
        default=DEFAULT_VENV,
        help=f"the peer's virtualenv ({DEFAULT_VENV.relative_to(ROOT)}, git-ignored)",
    )


def _python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _shown(path: Path) -> str:
    """A path as the report shows it: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _installed(venv: Path) -> str | None:
    """The requirement installed in `venv`, or None if there is no usable virtualenv."""
    marker = venv / MARKER
    if not _python(venv).exists() or not marker.exists():
        return None
    return marker.read_text(encoding="utf-8").strip()


@dataclass
class Peer:
    """Whether the peer runs in this benchmark, and with which python."""

    python: Path | None
    note: str  # why it is skipped; empty when it runs

    @property
    def runs(self) -> bool:
        return self.python is not None


def prepare(args: argparse.Namespace) -> Peer:
    """Decide; with --dlt (never in smoke mode), make or refresh the virtualenv first."""
    venv: Path = args.dlt_venv
    if args.dlt is False:
        return Peer(None, "skipped (--no-dlt)")
    installed = _installed(venv)
    if installed == REQUIREMENT:
        return Peer(_python(venv), "")
    state = f"has {installed}, not {REQUIREMENT}" if installed else "is missing"
    if args.dlt is None or args.smoke:
        if args.dlt and args.smoke:
            print(f"dlt peer: {_shown(venv)} {state}; --smoke never makes it", file=sys.stderr)
        return Peer(None, f"skipped: its virtualenv {_shown(venv)} {state} (`--dlt` makes it)")
    _install(venv)
    return Peer(_python(venv), "")


def _install(venv: Path) -> None:
    print(f"dlt peer: installing {REQUIREMENT} into {_shown(venv)} …", file=sys.stderr, flush=True)
    (venv / MARKER).unlink(missing_ok=True)
    commands = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(_python(venv)), "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
        [str(_python(venv)), "-m", "pip", "install", "--quiet", REQUIREMENT],
    ]
    for command in commands:
        done = subprocess.run(command, check=False)  # noqa: S603 - our interpreter and pip
        if done.returncode != 0:
            raise SystemExit(f"dlt peer: `{' '.join(command)}` failed (exit {done.returncode})")
    (venv / MARKER).write_text(REQUIREMENT + "\n", encoding="utf-8")


def run(
    peer: Peer,
    hello: dict[str, Any],
    database_url: str,
    *,
    page_size: int,
    concurrency: int,
    rate_cap: float,
) -> dict[str, Any]:
    """bench/dlt_peer.py in the peer's virtualenv, against the benchmark's fake API."""
    assert peer.python is not None
    command = [
        str(peer.python), str(SCRIPT),
        "--base-url", hello["base_url"], "--api-key", hello["api_key"],
        "--agent-id", hello["agent_id"], "--batches", ",".join(hello["batches"]),
        "--database-url", database_url, "--page-size", str(page_size),
        "--extract-workers", str(concurrency), "--normalize-workers", str(NORMALIZE_WORKERS),
        "--load-workers", str(LOAD_WORKERS), "--max-requests-per-second", f"{rate_cap:g}",
    ]  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="dlt-peer-cwd-") as cwd:  # no stray .dlt/ config
        proc = subprocess.run(  # noqa: S603 - the peer's own interpreter and our script
            command, cwd=cwd, capture_output=True, text=True, check=False, env=dict(os.environ)
        )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"scenario {NAME} (dlt peer) failed (exit {proc.returncode})")
    result: dict[str, Any] = json.loads(lines[-1])
    if proc.returncode != 0 and not result.get("failed"):
        result["failed"] = [f"exit {proc.returncode}"]
    return result


def report_lines(peer: Peer, by_name: dict[str, Any], rate_cap: float) -> list[str]:
    """The lines under the results table: B against the peer, and how the peer ran."""
    if not peer.runs or NAME not in by_name:
        return [f"Peer ({WHAT}): {peer.note or 'not run'}."]
    p = by_name[NAME]
    b = by_name.get("B")
    lines = []
    if b is not None:
        ratio = p.wall / b.wall
        verdict = f"{ratio:.1f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"
        lines.append(
            f"**B vs peer: ours is {verdict} than dlt** (B {b.wall:.2f} s, P {p.wall:.2f} s)."
        )
    steps = ", ".join(f"{k} {v:.2f} s" for k, v in p.result.get("steps", {}).items())
    lines.append(
        f"P: dlt {p.result.get('dlt', '?')} (`{REQUIREMENT}`), `rest_api` source, one "
        "parallelized resource per batch, cursor from the `next` link; "
        f"{NORMALIZE_WORKERS} normalize processes (peak RSS "
        f"{float(p.result.get('children_rss_mib', 0)):.0f} MiB), {LOAD_WORKERS} load threads, "
        f"`csv` files loaded with COPY; the same {rate_cap:,.0f} requests/s cap, applied by "
        f"bench/dlt_peer.py (dlt has none); {p.result.get('tables', '?')} tables made; "
        f"dlt's steps: {steps}; CPU of its processes {float(p.result.get('cpu_s', 0)):.1f} s "
        "(PostgreSQL's in the table). Not judged by the targets."
    )
    return lines
