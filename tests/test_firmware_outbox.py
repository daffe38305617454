"""securenode/outbox.py on CPython and real MicroPython: records, torn tails, acks, budget, seq."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "firmware_shims"))
from firmware_harness import firmware_files, run_both  # noqa: E402

PRELUDE = r'''
import json, os
from securenode import outbox

def fresh(name, **kw):
    opts = {"budget_bytes": 2000, "segment_bytes": 400, "max_record": 100, "ack_batch": 4}
    opts.update(kw)
    return outbox.Outbox(name, **opts)

def fill(box, n):
    for _ in range(n):
        seq = box.next_seq
        box.append(seq, b'{"seq":%d,"v":"reading"}' % seq)

'''

VECTORS = PRELUDE + r'''
def drain(box, limit=1000):
    got = []
    while limit:
        head = box.peek()
        if head is None:
            break
        got.append(head[0])
        box.ack(head[0])
        limit -= 1
    return got

def cut(path, keep):
    # MicroPython has no truncate: rewrite the prefix (this is the test, not the outbox).
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:keep])
    return len(data)

out = {}

# Header codec: fixed vector and a corrupted payload.
h = bytearray(10)
n = outbox.encode_header(h, 258, b"abc")
out["header"] = [n, list(h), outbox.check_record(h, b"abc"), outbox.check_record(h, b"abd")]

# Round trip; reopen keeps the unacked ones and the seq continues.
b = fresh("rt"); out["rt_open"] = b.open()
fill(b, 10)
out["rt_first"] = drain(b, 3)
b.flush()
b2 = fresh("rt"); b2.open()
out["rt_reopen"] = [b2.next_seq, b2.depth, drain(b2)]
out["rt_segments_left"] = sorted(os.listdir("rt"))

# Unflushed acks: at most ack_batch - 1 come back after a reset, never fewer than unacked.
b = fresh("batch"); b.open(); fill(b, 6)
drain(b, 3)
b2 = fresh("batch"); b2.open()
out["batch_resent"] = drain(b2)

# Everything acknowledged and deleted: seq still continues (from the state file).
b = fresh("empty"); b.open(); fill(b, 25); drain(b); b.flush()
b2 = fresh("empty"); b2.open()
out["empty_reopen"] = [b2.next_seq, b2.depth, b2.peek()]

# Torn tail: every cut inside the last record loses that record only; its seq is not reused.
torn = []
for keep_extra in (1, 5, 9, 10, 15):
    name = "torn%d" % keep_extra
    b = fresh(name); b.open(); fill(b, 3)
    seg = name + "/00000001.seg"
    size = os.stat(seg)[6]
    last = size // 3
    cut(seg, 2 * last + keep_extra)
    b2 = fresh(name)
    report = b2.open()
    seqs = drain(b2)
    b2.append(b2.next_seq, b"after")
    torn.append([report, seqs, b2.next_seq, os.stat(seg)[6] == 2 * last + 15, b2.torn])
    b3 = fresh(name)
    torn[-1].append(b3.open())   # the tail was repaired: no second report
out["torn"] = torn

# A cut exactly at a record boundary looks like the write never started: nothing torn.
b = fresh("boundary"); b.open(); fill(b, 3)
size = os.stat("boundary/00000001.seg")[6]
cut("boundary/00000001.seg", size * 2 // 3)
b2 = fresh("boundary")
out["boundary"] = [b2.open(), drain(b2), b2.next_seq]

# Garbage after the last good record (a torn page of old data): dropped, good ones kept.
b = fresh("garbage"); b.open(); fill(b, 2)
with open("garbage/00000001.seg", "ab") as f:
    f.write(b"\x40\x00\x03\x00\x00\x00\xff\xff\xff\xff" + b"\xff" * 30)
b2 = fresh("garbage")
out["garbage"] = [b2.open(), drain(b2)]

# A whole last record whose payload changed on flash (a page written with wrong bytes): its
# CRC fails, so it is torn, earlier ones kept.
b = fresh("flipped"); b.open(); fill(b, 3)
with open("flipped/00000001.seg", "rb") as f:
    data = bytearray(f.read())
data[-2] ^= 0x01
with open("flipped/00000001.seg", "wb") as f:
    f.write(data)
b2 = fresh("flipped")
out["flipped"] = [b2.open(), drain(b2), len(data) // 3]

# Files the outbox never writes (a stray "1.seg", a copy's leftover .tmp) are not segments.
b = fresh("strays"); b.open(); fill(b, 3)
for name in ("1.seg", "00000001.seg.tmp", "x.seg"):
    with open("strays/" + name, "wb") as f:
        f.write(b"\xff" * 12)
b2 = fresh("strays")
out["strays"] = [b2.open(), drain(b2), b2.next_seq]

# Budget: the oldest segment goes first and its unacked records are counted.
b = fresh("budget", budget_bytes=800, segment_bytes=400)
b.open()
fill(b, 40)
out["budget"] = [b.dropped, b.depth, b.peek()[0], b.next_seq - 1]
b2 = fresh("budget", budget_bytes=800, segment_bytes=400); b2.open()
out["budget_reopen"] = [b2.dropped, b2.depth, b2.peek()[0], b2.boots]

# Flash bytes written per reading in steady state (append then ack, one at a time).
b = fresh("wear"); b.open()
start = b.bytes_written
for _ in range(200):
    seq = b.next_seq
    b.append(seq, b'{"id":"board-1","seq":%d,"timestamp":1795600000,"status":0,"voltage":230.0,"freq":50.00}' % seq)
    b.ack(seq)
out["wear_bytes_per_reading"] = (b.bytes_written - start) / 200

# A failed flash write (here: the next segment's name is taken by a directory) loses that
# reading only, says so, and its seq is never given to another reading.
w = fresh("wfail", segment_bytes=200, max_record=100); w.open()
fill(w, 6)      # 6 x 33 bytes = 198: the seventh needs segment 2
os.mkdir("wfail/00000002.seg")
failed = []
try:
    w.append(w.next_seq, b'{"seq":7,"v":"reading"}')
except outbox.OutboxError as e:
    failed.append(str(e).startswith("outbox: writing seq 7 to flash failed"))
w.append(w.next_seq, b'{"seq":8,"v":"reading"}')
os.rmdir("wfail/00000002.seg")
w2 = fresh("wfail", segment_bytes=200, max_record=100)
out["write_failure"] = [failed, w.next_seq, w2.open(), drain(w2), w2.next_seq]

# Wrong use is a named error, never an assert.
errors = []
try:
    b.append(b.next_seq + 5, b"x")
except outbox.OutboxError as e:
    errors.append(str(e))
try:
    b.ack(12345)
except outbox.OutboxError as e:
    errors.append(str(e))
try:
    b.append(b.next_seq, b"x" * 101)
except outbox.OutboxError as e:
    errors.append(str(e))
out["errors"] = errors
print(json.dumps(out))
'''


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return run_both(firmware_files("outbox", "outbox_open"), VECTORS,
                    tmp_path_factory.mktemp("flash"))


def test_cpython_and_micropython_agree(results):
    assert results[0] == results[1]


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_record_header_is_length_seq_crc32(results, port):
    n, header, good, bad = results[port]["header"]
    import binascii
    import struct
    want = struct.pack("<HI", 3, 258)
    want += struct.pack("<I", binascii.crc32(b"abc", binascii.crc32(want[2:6])))
    assert n == 13 and bytes(header) == want
    assert good == 258 and bad == -1


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_reopen_keeps_unacked_in_order_and_seq_continues(results, port):
    r = results[port]
    assert r["rt_open"] == []
    assert r["rt_first"] == [1, 2, 3]
    assert r["rt_reopen"] == [11, 7, [4, 5, 6, 7, 8, 9, 10]]


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_acks_not_yet_persisted_are_resent_never_lost(results, port):
    # ack_batch 4: three acks were in RAM only; after the reset all six come back.
    assert results[port]["batch_resent"] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_seq_continues_after_every_segment_was_acked_and_deleted(results, port):
    assert results[port]["empty_reopen"] == [26, 0, None]


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_torn_tail_loses_only_the_torn_record_and_its_seq_is_not_reused(results, port):
    for report, seqs, next_seq, repaired_then_appended, torn_total, second in results[port]["torn"]:
        assert report == [[3, report[0][1]]] and report[0][1] > 0
        assert seqs == [1, 2]
        assert next_seq == 5   # seq 3 was torn, "after" took 4
        assert torn_total == 1
        assert second == []


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_cut_on_a_record_boundary_is_not_a_torn_record(results, port):
    assert results[port]["boundary"] == [[], [1, 2], 3]


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_garbage_after_good_records_is_dropped(results, port):
    report, seqs = results[port]["garbage"]
    assert seqs == [1, 2] and report == [[3, 40]]


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_a_whole_record_whose_bytes_changed_fails_its_crc_at_open(results, port):
    report, seqs, record_bytes = results[port]["flipped"]
    assert seqs == [1, 2] and report == [[3, record_bytes]]


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_only_names_the_outbox_writes_are_read_as_segments(results, port):
    assert results[port]["strays"] == [[], [1, 2, 3], 4]


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_full_outbox_drops_oldest_first_and_counts_them(results, port):
    dropped, depth, head, last = results[port]["budget"]
    assert dropped > 0 and dropped + depth == 40
    assert head == dropped + 1 and last == 40
    assert results[port]["budget_reopen"] == [dropped, depth, head, 2]


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_flash_bytes_per_reading_stay_near_one_record(results, port):
    # record (10 + 88 bytes) plus a 20-byte state file every 4th ack / segment switch
    per_reading = results[port]["wear_bytes_per_reading"]
    assert 98 <= per_reading <= 98 + 20


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_a_failed_flash_write_loses_that_reading_only_and_its_seq_is_not_reused(results, port):
    failed, next_seq, torn, seqs, reopened_next = results[port]["write_failure"]
    assert failed == [True] and next_seq == 9
    assert torn == [] and seqs == [1, 2, 3, 4, 5, 6, 8] and reopened_next == 9


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_misuse_is_a_named_outbox_error(results, port):
    errors = results[port]["errors"]
    assert len(errors) == 3
    assert errors[0].startswith("outbox: append seq")
    assert errors[1].startswith("outbox: ack for seq 12345")
    assert "exceeds max_record 100" in errors[2]


# The send cursor (next_unsent / rewind): a window of sends runs ahead of the acknowledgements,
# across segments, and starts over at the head on a new connection.
CURSOR_VECTORS = PRELUDE + r'''
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
def cursor_results(tmp_path_factory):
    return run_both(firmware_files("outbox", "outbox_open"), CURSOR_VECTORS,
                    tmp_path_factory.mktemp("cursor"))


def test_cursor_vectors_agree_on_cpython_and_micropython(cursor_results):
    assert cursor_results[0] == cursor_results[1]


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_cursor_runs_ahead_of_the_head_and_rewinds_to_it(cursor_results, port):
    r = cursor_results[port]
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
