"""The benchmark's optional dlt peer: when it runs, and never an install in smoke mode."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench import dlt_peer_runner as peer


def _args(venv: Path, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--smoke", action="store_true")
    peer.add_arguments(parser)
    return parser.parse_args(["--dlt-venv", str(venv), *argv])


def _venv(path: Path, requirement: str) -> Path:
    (path / "bin").mkdir(parents=True)
    (path / "bin" / "python").write_text("")
    (path / peer.MARKER).write_text(requirement + "\n")
    return path


@pytest.fixture
def installs(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    made: list[Path] = []
    monkeypatch.setattr(peer, "_install", made.append)
    return made


def test_auto_skips_without_a_virtualenv_and_installs_nothing(tmp_path, installs):
    for argv in ((), ("--smoke",), ("--dlt", "--smoke")):
        decided = peer.prepare(_args(tmp_path / "venv", *argv))
        assert not decided.runs
        assert "--dlt" in decided.note
    assert installs == []


def test_no_dlt_never_runs(tmp_path, installs):
    venv = _venv(tmp_path / "venv", peer.REQUIREMENT)
    assert not peer.prepare(_args(venv, "--no-dlt")).runs
    assert installs == []


def test_auto_runs_a_current_virtualenv_even_in_smoke_mode(tmp_path, installs):
    venv = _venv(tmp_path / "venv", peer.REQUIREMENT)
    for argv in ((), ("--smoke",), ("--dlt",)):
        assert peer.prepare(_args(venv, *argv)).python == venv / "bin" / "python"
    assert installs == []


def test_a_stale_pin_is_reinstalled_by_dlt_only_outside_smoke_mode(tmp_path, installs):
    venv = _venv(tmp_path / "venv", "dlt[postgres]==0.0.1")
    assert not peer.prepare(_args(venv)).runs
    assert not peer.prepare(_args(venv, "--dlt", "--smoke")).runs
    assert installs == []
    assert peer.prepare(_args(venv, "--dlt")).runs
    assert installs == [venv]


def test_dlt_and_no_dlt_exclude_each_other(tmp_path):
    with pytest.raises(SystemExit):
        _args(tmp_path, "--dlt", "--no-dlt")


def test_the_report_compares_b_with_the_peer():
    ran = peer.Peer(Path("python"), "")
    rows = {
        "B": SimpleNamespace(wall=10.0, result={}),
        "P": SimpleNamespace(wall=25.0, result={"dlt": "1.31.0", "steps": {"extract": 5.0}}),
    }
    lines = peer.report_lines(ran, rows, 1000.0)
    assert "ours is 2.5x faster than dlt" in lines[0]
    assert "1,000 requests/s" in lines[1]
    rows["P"].wall = 5.0
    assert "ours is 2.0x slower than dlt" in peer.report_lines(ran, rows, 1000.0)[0]
    skipped = peer.Peer(None, "skipped (--no-dlt)")
    assert peer.report_lines(skipped, {}, 1000.0) == [f"Peer ({peer.WHAT}): skipped (--no-dlt)."]
