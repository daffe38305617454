"""A board whose heap cannot hold the app still contains the failure (issue 10), on real
MicroPython: the MemoryError is recorded on flash, reported as ``fatal`` and the board
resets, boot after boot (the count grows), never left at the REPL. main.py imports crash.py
before anything else for this: a crash.py loaded only after a MemoryError (tried, to save
its ~1 KB) found no 640 bytes in one piece in the heap the app left, so the board ended at a
traceback instead. The heap here, 48K from .mpy, is well under what the app needs from .mpy
(the smallest that delivers: 70-72K on 2026-11-26 evening, 87K that morning, before the
names diet made the 80K this test used enough), and well over what crash.py needs (it still
records at 40K).
"""
from mp_fixtures import mp_launch  # noqa: F401  (fixture)


def test_a_heap_too_short_for_the_app_records_the_memory_error_and_resets(mp_launch, broker):
    board = mp_launch("heap-short", broker.port, heap="48K", bytecode="mpy")
    board.wait_for("fatal", timeout=30, count=2)
    fatal = board.of("fatal")[:2]
    # count 2: the first boot's record was on flash when the second boot crashed.
    assert [(f["kind"], f["count"]) for f in fatal] == [("MemoryError", 1), ("MemoryError", 2)]
    assert "memory allocation failed" in fatal[0]["detail"]
    assert board.proc.poll() is None  # still resetting, not ended at a traceback
