"""Soak on real MicroPython: many readings at a short interval under the esp32-spiram heap,
with ``gc.mem_alloc()`` after a collect logged every 100 readings: the heap must not grow.

The log comes from a wrapper ``securenode/sensor.py`` on the flash (the real module renamed
``sensor_real.py``), never from a hook in the firmware. Readings go over MQTTS to the real
Mosquitto; every one must be acknowledged in order.
"""
import os
import time
from pathlib import Path

from mp_fixtures import mp_launch  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parent.parent
# 2,000 readings took 110 s on this machine's 2 shared cores (25 ms windows, MQTTS):
# too long for make test's 10-minute budget, which runs 500 (~30 s);
# SECURENODE_SOAK_FULL=1 runs the full 2,000.
SOAK_READINGS = 2000 if os.environ.get("SECURENODE_SOAK_FULL") == "1" else 500
EVERY = 100

MEM_SENSOR = """
# Soak probe: every %d readings, collect and print the heap in use (one JSON line).
import gc
import json
from securenode import sensor_real


class Sampler(sensor_real.Sampler):
    reads = 0

    def read(self):
        Sampler.reads += 1
        if Sampler.reads %% %d == 0:
            gc.collect()
            print(json.dumps({"event": "mem", "readings": Sampler.reads,
                              "alloc": gc.mem_alloc(), "free": gc.mem_free()}))
        return sensor_real.Sampler.read(self)
""" % (EVERY, EVERY)


def test_heap_in_use_does_not_grow_over_a_long_run(mp_launch, broker):
    sensor = (ROOT / "firmware" / "securenode" / "sensor.py").read_bytes()
    started = time.monotonic()
    board = mp_launch("mp-soak", broker.port, files={
        "securenode/sensor.py": MEM_SENSOR.encode(), "securenode/sensor_real.py": sensor,
    }, config={"run.max_readings": SOAK_READINGS, "sample.interval_ms": 25,
               "sample.window_ms": 25, "sample.samples": 16})
    board.wait_for("halted", timeout=SOAK_READINGS * 0.25, reason="done")
    took = time.monotonic() - started
    acked = [e["seq"] for e in board.of("acked")]
    assert acked == list(range(1, SOAK_READINGS + 1))
    mem = [(e["readings"], e["alloc"]) for e in board.of("mem")]
    assert len(mem) >= SOAK_READINGS // EVERY - 1
    print("soak: %d readings in %.0f s; heap in use after collect every %d readings: %s"
          % (SOAK_READINGS, took, EVERY, [a for _, a in mem]))
    # After the first 200 readings (buffers, the link, the outbox segments are made),
    # the heap in use stays where it was: no per-reading growth.
    settled = [a for n, a in mem if n >= 200]
    assert max(settled) - settled[0] <= 2048, mem
    assert settled[-1] - settled[0] <= 1024, mem
    assert board.errors() == []
