"""Fixtures for boards on the real MicroPython runtime (host_sim.board --runtime micropython).

``mp_launch`` starts a board exactly as conftest's ``launch`` does (same config, same Board
class parsing the same JSON event lines) but as a real MicroPython process with a LittleFS2
flash image; ``jsonl_server`` is the collector's real JSON-lines listener
(tools/collector_jsonl.py) over an in-memory store, so no PostgreSQL is needed.

Until the memory issue lands the firmware does not fit an ESP32's 112K heap, so the tests
run under the stated ``esp32-spiram`` profile (2M) unless they pass ``board=``/``heap=``.
"""

import copy
import json
import signal
import threading
import time

import pytest

from conftest import Board
from host_sim.fleet import board_config
from host_sim.flash import board_command, prepare_flash

MP_BOARD = "esp32-spiram"


class MemoryStore:
    """What tools/collector_jsonl.JsonlServer stores into, kept in memory for tests."""

    def __init__(self):
        self.readings = {}      # device id -> {seq: reading dict}
        self.duplicates = 0
        self.statuses = []
        self.rejects = []
        self._lock = threading.Lock()

    def add_reading(self, device_id, reading):
        with self._lock:
            seen = self.readings.setdefault(device_id, {})
            if reading["seq"] in seen:
                self.duplicates += 1
                return False
            seen[reading["seq"]] = reading
            return True

    def add_status(self, device_id, payload, status):
        with self._lock:
            self.statuses.append((device_id, status))

    def add_reject(self, source, device_id, payload, reason):
        with self._lock:
            self.rejects.append((device_id, reason))


@pytest.fixture
def jsonl_server(pki):
    from tools.collector_jsonl import JsonlServer

    store = MemoryStore()
    server = JsonlServer(store, "127.0.0.1", 0, pki.ca.cert_pem, pki.server.chain_pem,
                         pki.server.key_pem).start()
    server.store = store
    yield server
    server.stop()


def mp_config(device_id, mqtt_port, config=None, interval_ms=200):
    cfg = board_config(device_id, mqtt_port, readings=0, interval_ms=interval_ms)
    for dotted, value in (config or {}).items():
        section, _, field = dotted.rpartition(".")
        target = cfg
        for part in filter(None, section.split(".")):
            target = target.setdefault(part, {})
        target[field] = copy.deepcopy(value)
    return cfg


@pytest.fixture
def mp_launch(tmp_path, pki, ntp):
    """Start a real-MicroPython board: mp_launch(device_id, mqtt_port, config=..., **options).

    Options are host_sim.board flags (board=, heap=, bytecode=, flash_page_us=, ...); the
    flash directory and its image (``<flash>.state/flash.img``) are under tmp_path and are
    reused when the same ``flash=`` is passed again (a restart after a power cut).
    """
    started = []

    def start(device_id, mqtt_port, config=None, files=None, flash=None, **options):
        flash = flash or tmp_path / ("mpflash-%s-%d" % (device_id, len(started)))
        if not (flash / "main.py").exists():
            device = pki.device(device_id)
            flash_files = {"ca.der": pki.ca.cert_der, "device.crt.der": device.cert_der,
                           "device.key.der": device.key_der}
            flash_files.update(files or {})
            prepare_flash(flash, mp_config(device_id, mqtt_port, config), flash_files)
        options.setdefault("ntp", "127.0.0.1:%d" % ntp.address[1])
        options.setdefault("device_seed", device_id)
        options.setdefault("board", MP_BOARD if "heap" not in options else None)
        proc = Board(device_id, board_command(flash, runtime="micropython", **options),
                     verbose=False)
        proc.flash = flash
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def debug_lines(flash):
    """The launcher's sim_debug.jsonl lines for a board's flash directory."""
    path = flash.parent / (flash.name + ".state") / "sim_debug.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# A tight heap's reconnect (tests/test_memory_*.py): what a board must survive at its cap.
RECONNECT_CONFIG = {"sample.interval_ms": 150, "timeouts_ms.io": 1500,
                    "timeouts_ms.connect": 1500, "backoff.min_ms": 100, "backoff.max_ms": 600}


def reconnects_after_broker_kills(board, broker, n, kills_at=(6, 14)):
    """SIGKILL the broker once the board has each count of acks, start it again 1 s later
    (readings wait in the outbox meanwhile), then check the run: every one of n readings
    acknowledged (a resend after a lost PUBACK counts once), a new session per kill, one
    boot (no MemoryError reset), no fatal."""
    for target in kills_at:
        deadline = time.monotonic() + 60
        while len(board.of("acked")) < target and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(board.of("acked")) >= target, "board stalled before the broker kill"
        broker.stop(signal.SIGKILL)
        time.sleep(1.0)
        broker.start()
    board.wait_for("halted", timeout=120, reason="done")
    assert board.of("fatal") == []
    assert sorted(set(e["seq"] for e in board.of("acked"))) == list(range(1, n + 1))
    assert len(board.of("mqtt_connected")) >= 1 + len(kills_at)
    boot = [d for d in debug_lines(board.flash) if d["kind"] == "boot"]
    assert len(boot) == 1, boot
