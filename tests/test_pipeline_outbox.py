"""The outbox's send cursor (next_unsent / rewind) on CPython and real MicroPython: a window
of sends runs ahead of the acknowledgements, across segments, and starts over at the head."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "firmware_shims"))
from firmware_harness import firmware_files, run_both  # noqa: E402

VECTORS = r'''
import json
from securenode import outbox

def fresh(name, **kw):
    opts = {"budget_bytes": 2000, "segment_bytes": 400, "max_record": 100, "ack_batch": 4}
    opts.update(kw)
    return outbox.Outbox(name, **opts)

def fill(box, n):
    for _ in range(n):
        seq = box.next_seq
        box.append(seq, b'{"seq":%d,"v":"reading"}' % seq)

def ahead(box, n):
    got = []
    for _ in range(n):
        r = box.next_unsent()
        got.append(r and r[0])
    return got

out = {}
b = fresh("cursor"); b.open()
fill(b, 30)                       # 30 x 33 bytes: three segments
out["window"] = ahead(b, 5)       # the first window
b.ack(1); b.ack(2)
out["after_acks"] = ahead(b, 3)   # goes on after the last one handed out, not the head
out["across"] = ahead(b, 23)   # through segment ends, then None at the end
b.rewind()
out["rewind"] = ahead(b, 2)       # a new connection: from the head again
b2 = fresh("cursor"); b2.open()   # a reboot: acks 1, 2 not persisted (ack_batch 4)
out["reboot"] = ahead(b2, 2)
ahead(b2, 10)                     # the cursor is at the end of segment 1 (12 records)
for s in range(1, 13):            # acks finish segment 1: it is deleted under the cursor
    b2.ack(s)
out["after_delete"] = ahead(b2, 2)
bb = fresh("dropped", budget_bytes=800, segment_bytes=400); bb.open()
fill(bb, 5)
first = ahead(bb, 3)
fill(bb, 30)                      # the budget drops the segment the cursor was in
out["dropped"] = [first, bb.dropped, ahead(bb, 1), bb.peek()[0]]
e = fresh("empty"); e.open()
out["empty"] = [e.next_unsent(), None]
fill(e, 1)
out["empty"][1] = e.next_unsent()[0]
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_both(firmware_files("outbox"), VECTORS, tmp_path_factory.mktemp("flash"))


def test_cpython_and_micropython_agree(results):
    assert results[0] == results[1]


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_cursor_runs_ahead_of_the_head_and_rewinds_to_it(results, port):
    r = results[port]
    assert r["window"] == [1, 2, 3, 4, 5]
    assert r["after_acks"] == [6, 7, 8]
    assert r["across"] == list(range(9, 31)) + [None]
    assert r["rewind"] == [3, 4]
    assert r["reboot"] == [1, 2]
    assert r["after_delete"] == [13, 14]  # segment 1 gone: the cursor goes on in segment 2
    first, dropped, nxt, head = r["dropped"]
    assert first == [1, 2, 3] and dropped > 0
    assert nxt == [head], "after a budget drop the cursor restarts at the new head"
    assert r["empty"] == [None, 1]
