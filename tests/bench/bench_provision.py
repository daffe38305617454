"""Provisioning timings: the base station's API over TLS, the credential release (including
mosquitto_passwd and the broker's SIGHUP reload), and a simulated board from boot to MQTTS.

- request: one `POST /v1/auth/request` on a fresh TLS connection (what a board does), from a
  CPython client; poll likewise;
- release: the poll that creates the per-device password in Mosquitto and returns it;
- board: a fresh simulated board (beacon-less, host configured) from its boot event to the
  comparison code and from `provisioned` to `mqtt_connected` (board clock, t_ms); from the
  committed CLI approval to `provisioned` (host clock). The board polls every 200..1000 ms,
  so that step is mostly the wait for its next poll.

    .venv/bin/python tests/bench/bench_provision.py
"""

import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))

from conftest import Pki  # noqa: E402
from host_sim.fleet import BoardProcess, board_config  # noqa: E402
from host_sim.flash import board_command, prepare_flash  # noqa: E402
from host_sim.servers.ntp import NtpServer  # noqa: E402
from provision_helpers import (ask, cli, password_broker, poll, provisioning_config,  # noqa: E402
                               start_base_station)

API_N = 40
RELEASE_N = 10
BOARD_N = 3


def ms(values):
    return "%.1f" % statistics.median(values), "%.1f" % max(values)


def wait(board, event, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = board.of(event)
        if found:
            return found[0]
        time.sleep(0.02)
    raise SystemExit("board: no %s within %ss" % (event, timeout))


def main():
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "pki").mkdir()
        pki = Pki(Path(tmp) / "pki")
        with password_broker(pki) as broker, NtpServer() as ntp:
            station = start_base_station(pki, broker, Path(tmp) / "state")
            try:
                request_ms, poll_ms, release_ms = [], [], []
                for i in range(API_N):
                    # Each board from an address of its own (one address may keep only
                    # a few requests pending).
                    ip = "127.0.20.%d" % (i + 1)
                    t0 = time.perf_counter()
                    rid, nonce = ask(pki, station.port, "bench-%d" % i, source_ip=ip)
                    t1 = time.perf_counter()
                    poll(pki, station.port, rid, "bench-%d" % i, nonce, source_ip=ip)
                    t2 = time.perf_counter()
                    request_ms.append((t1 - t0) * 1000)
                    poll_ms.append((t2 - t1) * 1000)
                    if i < RELEASE_N:
                        station.store.decide(str(rid), True, time.time(), "bench")
                        t3 = time.perf_counter()
                        status, doc = poll(pki, station.port, rid, "bench-%d" % i, nonce,
                                           source_ip=ip)
                        release_ms.append((time.perf_counter() - t3) * 1000)
                        assert doc["status"] == "approved"
                rows.append(("request (TLS + POST)", API_N) + ms(request_ms))
                rows.append(("poll, pending (TLS + POST)", API_N) + ms(poll_ms))
                rows.append(("poll that releases (mosquitto_passwd + SIGHUP)", RELEASE_N)
                            + ms(release_ms))
                to_code, to_creds, to_mqtt = [], [], []
                for i in range(BOARD_N):
                    device = "bench-board-%d" % i
                    cfg = board_config(device, 1, 1, 200)
                    for dotted, value in provisioning_config(station.port).items():
                        section, _, field = dotted.rpartition(".")
                        (cfg[section] if section else cfg)[field] = value
                    flash = prepare_flash(Path(tmp) / device, cfg, {"ca.der": pki.ca.cert_der})
                    board = BoardProcess(device, board_command(
                        flash, ntp="127.0.0.1:%d" % ntp.address[1], clock="host",
                        device_seed=device), verbose=False)
                    try:
                        boot = wait(board, "boot")
                        code = wait(board, "provision_code")
                        assert cli(station.store.dir, "approve", device).returncode == 0
                        # Host clock from the committed approval (the CLI has returned) to
                        # the board's event; +-20 ms from polling the event list.
                        approved_at = time.monotonic()
                        provisioned = wait(board, "provisioned")
                        to_creds.append((time.monotonic() - approved_at) * 1000)
                        connected = wait(board, "mqtt_connected")
                        to_code.append(code["t_ms"] - boot["t_ms"])
                        to_mqtt.append(connected["t_ms"] - provisioned["t_ms"])
                    finally:
                        board.stop()
                rows.append(("board: boot -> comparison code", BOARD_N) + ms(to_code))
                rows.append(("board: approval -> credentials stored", BOARD_N) + ms(to_creds))
                rows.append(("board: credentials -> MQTTS connected", BOARD_N) + ms(to_mqtt))
            finally:
                station.stop()
    lines = ["| step | n | median ms | max ms |", "|---|---|---|---|"]
    lines += ["| %s | %d | %s | %s |" % row for row in rows]
    table = "\n".join(lines)
    print(table)
    out = HERE / "results" / "provision.md"
    out.write_text("# Provisioning timings (tests/bench/bench_provision.py)\n\n" + table + "\n")


if __name__ == "__main__":
    main()
