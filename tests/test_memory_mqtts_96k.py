"""Issue 10's goal for MQTTS from `.mpy`: a full run at a 96K heap, on real MicroPython.

A real board (host_sim.board --runtime micropython, the firmware as `.mpy` on LittleFS,
its own unmodified main.py) against Mosquitto with the pinned CA and a client certificate,
under a hard `-X heapsize` cap of 96K for the firmware (the launcher's allowance for its
Python stand-ins of C modules comes on top, as the bench says). Every reading must reach
the subscriber, in order, with no error, no fatal and a clean stop.

Measured when this test was added (2026-11-26, tree at ac7d785): 12 of 12 runs pass at 96K,
every run from 92K to 98K passes, and the bisected smallest heap is 87 KB, so the cap has a
~9 KB margin. Near the minimum a run fails by where the heap's holes happen to fall (keys,
times and sizes differ per run): below ~88K a piece of a few hundred bytes (the SSLContext,
a bytecode block of the link's module) finds no hole. After the names diet (that evening)
the bisected smallest heap is 67 KB, a ~29 KB margin. make bench's soak runs 10,000
readings at this cap.

A reconnect at the cap is its own test: the broker is killed twice mid-run, so the board
makes new TCP + TLS sessions and a new CONNECT in a heap that readings, the outbox and the
first session have already used and fragmented.
"""
import time

from mp_fixtures import (RECONNECT_CONFIG, debug_lines, mp_launch,  # noqa: F401
                         reconnects_after_broker_kills)

HEAP = 96 * 1024


def test_mqtts_from_mpy_delivers_every_reading_in_96k(mp_launch, broker, subscriber):
    n = 30
    board = mp_launch("cap-mpy", broker.port, heap=str(HEAP), bytecode="mpy",
                      config={"run.max_readings": n, "sample.interval_ms": 100})
    board.wait_for("halted", timeout=120, reason="done")
    assert board.of("fatal") == [] and board.errors() == []
    assert [e["seq"] for e in board.of("acked")] == list(range(1, n + 1))
    deadline = time.monotonic() + 5
    while len(subscriber.readings("cap-mpy")) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(r["seq"] for r in subscriber.readings("cap-mpy")) == list(range(1, n + 1))
    # The cap was the firmware's heap, and the package ran from .mpy files.
    boot = [d for d in debug_lines(board.flash) if d["kind"] == "boot"]
    assert len(boot) == 1, boot  # one boot: no MemoryError reset on the way
    assert (boot[0]["heap_bytes"], boot[0]["bytecode"]) == (HEAP, "mpy")


def test_mqtts_from_mpy_reconnects_after_broker_kills_in_96k(mp_launch, pki):
    from host_sim.servers.mosquitto import Broker

    n = 24
    broker = Broker(pki.ca.cert_pem, pki.server.chain_pem, pki.server.key_pem).start()
    try:
        board = mp_launch("cap-reconnect", broker.port, heap=str(HEAP), bytecode="mpy",
                          config=dict(RECONNECT_CONFIG, **{"run.max_readings": n}))
        reconnects_after_broker_kills(board, broker, n)
        assert max(e["depth"] for e in board.of("stored")) >= 2  # readings waited
    finally:
        broker.close()
