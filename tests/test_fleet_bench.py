"""tests/bench/bench_fleet.py --only: the rows named are run and replace their own rows in
fleet.json (same runtime, boards, sampling priority); every other row is kept."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "bench"))
import bench_fleet  # noqa: E402


def row(runtime, boards, rt, tag):
    return {"runtime": runtime, "boards": boards, "rt_sampling": rt, "tag": tag}


def test_only_names_runtime_and_board_count():
    assert bench_fleet.parse_only("micropython:200, cpython:100") == [
        ("micropython", 200), ("cpython", 100)]
    for bad in ("micropython", "java:200", "cpython:0", "cpython:many"):
        with pytest.raises(SystemExit, match="RUNTIME:BOARDS"):
            bench_fleet.parse_only(bad)


def test_a_rerun_row_replaces_its_own_and_keeps_the_others():
    old = [row("cpython", 100, "real-time (the window)", "old"),
           row("cpython", 200, "real-time (the window)", "old"),
           row("cpython", 200, "normal (--no-rt-sampling)", "old"),
           row("micropython", 200, "real-time (the interpreter, after boot)", "old")]
    new = [row("cpython", 200, "real-time (the window)", "new"),
           row("micropython", 100, "real-time (the interpreter, after boot)", "new")]
    merged = bench_fleet.merge_rows(old, new)
    assert [(r["runtime"], r["boards"], r["rt_sampling"][:4], r["tag"]) for r in merged] == [
        ("cpython", 100, "real", "old"), ("cpython", 200, "real", "new"),
        ("cpython", 200, "norm", "old"), ("micropython", 200, "real", "old"),
        ("micropython", 100, "real", "new")]
