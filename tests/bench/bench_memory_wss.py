"""Memory of the WebSocket transports and of provisioning on the real MicroPython unix port
(issue 10): the smallest heap, bisected with bench_memory's own bisection, from `.mpy`.

- wss, mqtt_wss, jsonl: as bench_memory (6 readings acknowledged, clean stop, no fatal).
- provisioning: this port's TLS socket has no ``getpeercert()`` (its Mbed TLS is built
  without MBEDTLS_SSL_KEEP_PEER_CERTIFICATE), so a board cannot compute the comparison code
  and refuses before sending any request. What can honestly be measured is the heap it needs
  to get there: boot, the provisioning client and HTTP codec loaded from `.mpy`, TCP and the
  pinned TLS handshake with the base station, and the refusal (a named
  ``provision_protocol`` error, then backoff), with no MemoryError on the way. The request,
  the comparison code, the operator's wait and storing the credentials are not reached here.

    .venv/bin/python tests/bench/bench_memory_wss.py      # writes results/memory_wss.md
    BENCH_TRANSPORTS=wss,provisioning .venv/bin/python tests/bench/bench_memory_wss.py
"""

import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent.parent), str(HERE.parent)]

import bench_memory as bm  # noqa: E402

REFUSAL = "cannot read the peer certificate"


class ProvisioningPeers:
    """A password broker and a base station on loopback, as tests/test_provision_board.py."""

    def __init__(self, peers):
        self.peers = peers

    def __enter__(self):
        from provision_helpers import password_broker, start_base_station

        self.broker = password_broker(self.peers.pki).__enter__()
        self.station = start_base_station(self.peers.pki, self.broker,
                                          Path(tempfile.mkdtemp(dir=self.peers.tmp)) / "state")
        return self

    def __exit__(self, *exc):
        self.station.stop()
        self.broker.__exit__(None, None, None)

    def run_board(self, heap):
        """Boot a provisioning board at ``heap``; its events once it refused or failed."""
        from conftest import Board
        from host_sim.flash import board_command, prepare_flash
        from mp_fixtures import mp_config
        from provision_helpers import provisioning_config

        flash = Path(tempfile.mkdtemp(dir=self.peers.tmp)) / "flash"
        prepare_flash(flash, mp_config("mem-prov", 1, provisioning_config(self.station.port)),
                      {"ca.der": self.peers.pki.ca.cert_der})
        board = Board("mem-prov", board_command(
            flash, runtime="micropython", heap=str(heap), bytecode="mpy",
            ntp="127.0.0.1:%d" % self.peers.ntp.address[1], device_seed="mem-prov"),
            verbose=False)
        return bm.watch(board, 40, lambda b: any(REFUSAL in e.get("detail", "")
                                                 for e in b.of("error")))

    def fits(self, transport, heap, romfs=None):
        board = self.run_board(heap)
        refused = [e for e in board.of("error") if REFUSAL in e.get("detail", "")]
        ok = bool(refused) and not board.of("fatal") and not board.of("provision_code")
        print("  provisioning heap %6d: %s" % (heap, "refused as it must" if ok else (
            board.of("fatal")[:1] or board.errors()[:2] or "no refusal")), flush=True)
        return ok


def main():
    transports = os.environ.get("BENCH_TRANSPORTS", "wss,mqtt_wss,jsonl,provisioning").split(",")
    rows = []
    with bm.Peers() as peers:
        for t in transports:
            if t == "provisioning":
                with ProvisioningPeers(peers) as prov:
                    rows.append((t, bm.smallest_heap(prov, t, lo=48 * 1024, hi=160 * 1024)))
            else:
                rows.append((t, bm.smallest_heap(peers, t, lo=48 * 1024, hi=160 * 1024)))
    lines = ["# WebSocket transports and provisioning: smallest heap from .mpy", "",
             "Real MicroPython unix port, `.mpy` on LittleFS, bisected to 1 KB with "
             "`bench_memory.smallest_heap` (the firmware's `-X heapsize`; the launcher's "
             "stand-in allowance comes on top). Goal: each at 112K (an ESP32 without PSRAM).",
             "", "| transport | smallest heap | what it proves |", "|---|---:|---|"]
    what = {"provisioning": "boot, provisioning client, pinned TLS to the base station, the "
                            "named refusal (this port has no getpeercert); not the request, "
                            "the code, the wait or the stored credentials",
            "jsonl": "6 readings acknowledged, clean stop",
            "wss": "6 readings acknowledged, clean stop",
            "mqtt_wss": "6 readings acknowledged, clean stop"}
    for t, h in rows:
        lines.append("| %s | %s | %s |" % (t, "%.1f KB" % (h / 1024.0) if h else "> 160 KB",
                                           what.get(t, "")))
    text = "\n".join(lines) + "\n"
    (bm.RESULTS / "memory_wss.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
