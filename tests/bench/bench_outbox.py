"""Outbox on flash: bytes written per reading, and what an append and an ack cost.

Runs securenode/outbox.py unmodified on CPython and on real MicroPython (the WebAssembly port
under Node, in-memory VFS), in a directory laid out like the board's flash. Flash bytes are
what the outbox hands to the filesystem (records, state file, the rare torn-tail repair);
the filesystem's own metadata writes (LittleFS/FAT) come on top and are not modelled.
Times are host times: they rank the operations, they are not ESP32 flash timings.

    .venv/bin/python tests/bench/bench_outbox.py
"""

import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "firmware_shims"))
from firmware_harness import firmware_files, last_json_line, run_cpython, run_micropython  # noqa: E402

N = 2000
SCRIPT = r'''
import json, time
from securenode import outbox

def now_us():
    try:
        return time.ticks_us()
    except AttributeError:
        return int(time.perf_counter() * 1000000)

PAYLOAD = '{"id":"board-1","seq":%d,"timestamp":1795600000,"status":0,"voltage":230.0,"freq":50.00}'
rows = []
for batch in (1, 8, 32):
    box = outbox.Outbox("steady%d" % batch, budget_bytes=16384, segment_bytes=2048,
                        ack_batch=batch)
    box.open()
    start_bytes = box.bytes_written
    append_us = ack_us = 0
    for _ in range(N):
        seq = box.next_seq
        payload = (PAYLOAD % seq).encode()
        t0 = now_us(); box.append(seq, payload); t1 = now_us()
        head = box.peek(); box.ack(head[0]); t2 = now_us()
        append_us += t1 - t0
        ack_us += t2 - t1
    rows.append(["steady, ack_batch %d" % batch, len(payload),
                 (box.bytes_written - start_bytes) / N, append_us / N, ack_us / N])
# Backlog: an outage fills the outbox, then it drains (reads come from flash).
box = outbox.Outbox("backlog", budget_bytes=65536, segment_bytes=2048, ack_batch=8)
box.open()
start_bytes = box.bytes_written
t0 = now_us()
for _ in range(500):
    seq = box.next_seq
    box.append(seq, (PAYLOAD % seq).encode())
t1 = now_us()
while box.peek() is not None:
    box.ack(box.peek()[0])
t2 = now_us()
rows.append(["outage backlog of 500, then drain", len(PAYLOAD % 1),
             (box.bytes_written - start_bytes) / 500, (t1 - t0) / 500, (t2 - t1) / 500])
print(json.dumps(rows))
'''.replace("N)", "%d)" % N).replace("/ N", "/ %d" % N)


def main():
    files = firmware_files("outbox", "outbox_open")  # open() loads outbox_open
    with tempfile.TemporaryDirectory() as tmp:
        cpython = last_json_line(run_cpython(files, SCRIPT, tmp, timeout_s=300))
    _, out, _ = run_micropython(files, SCRIPT, timeout_s=300)
    micropython = last_json_line(out)
    lines = ["# Outbox: flash bytes per reading, append and ack cost", "",
             "%d readings per steady-state row; a record is 10 bytes of header + the payload; "
             "the state file (~20 bytes) is replaced every ack_batch acks and at each segment "
             "switch. Host times (µs), not ESP32 flash timings." % N, "",
             "| case | payload bytes | flash bytes per reading | CPython append µs | "
             "CPython peek+ack µs | MicroPython append µs | MicroPython peek+ack µs |",
             "|---|---|---|---|---|---|---|"]
    for c, m in zip(cpython, micropython):
        assert abs(c[2] - m[2]) < 1e-9, "ports disagree on bytes written"
        lines.append("| %s | %d | %.1f | %.0f | %.0f | %.0f | %.0f |"
                     % (c[0], c[1], c[2], c[3], c[4], m[3], m[4]))
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "outbox.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
