"""Virtual boards on pseudo-terminals for tests/test_board_*.py.

``vboard(flash_dir=None, platform="esp32", ntp=None, romfs_bytes=0)`` starts a VirtualBoard (the real
MicroPython unix port behind a pty) with the machine/network/ntptime stand-ins on its path
and returns it; every board started is stopped at the end of the test.
"""
import json
import os
import select
import threading
import tty
import subprocess
import sys
from pathlib import Path

import pytest

from host_sim.pty_board import VirtualBoard
from host_sim.pty_board.standins import module_dirs

REPO = Path(__file__).resolve().parent.parent
BOARD_PY = REPO / "tools" / "board.py"


@pytest.fixture
def vboard(tmp_path):
    started = []

    def start(flash_dir=None, platform="esp32", ntp=None, romfs_bytes=0):
        flash = Path(flash_dir or tmp_path / ("flash%d" % len(started)))
        flash.mkdir(parents=True, exist_ok=True)
        settings = tmp_path / ("board%d.json" % len(started))
        settings.write_text(json.dumps({"port": platform, "device_seed": "vboard",
                                        "ntp": list(ntp) if ntp else None}))
        board = VirtualBoard(flash, platform=platform, module_dirs=module_dirs(),
                             env={"SECURENODE_MP_BOARD": str(settings)},
                             romfs_bytes=romfs_bytes)
        board.start()
        started.append(board)
        return board

    yield start
    for board in started:
        board.stop()


def run_board_tool(*args, timeout=60, cwd=REPO, input_text=None):
    """tools/board.py as a user runs it; returns the CompletedProcess (text)."""
    env = dict(os.environ)
    env.pop("SECURENODE_PORT", None)
    return subprocess.run([sys.executable, str(BOARD_PY)] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env,
                          input=input_text)


@pytest.fixture
def garbage_port():
    """A pty whose far end answers every write with noise, as a GPS or a crashed board would."""
    master, slave = os.openpty()
    tty.setraw(slave)
    stop = threading.Event()

    def babble():
        while not stop.is_set():
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                try:
                    os.read(master, 1024)
                    os.write(master, b"\xff$GPGGA,garbage\x00\r\n")
                except OSError:
                    return
    thread = threading.Thread(target=babble, daemon=True)
    thread.start()
    yield os.ttyname(slave)
    stop.set()
    thread.join(2)
    os.close(master)
    os.close(slave)
