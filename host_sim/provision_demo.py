"""`make sim`, provisioning run: a fresh board gets its MQTT credentials from the base station.

Starts SNTP, Mosquitto (certificate listener + a user-name/password listener), the base
station (tools/basestation/, with its UDP beacon on 127.0.0.1) and a subscriber, then one
simulated board whose flash holds only WiFi settings and the pinned CA. The board finds the
base station by its beacon, asks, prints its comparison code; this script checks the code
against `basestation list`, approves the request with `basestation approve` (as an operator
would), and waits until the board's readings, sent with the issued credentials, reach the
subscriber. Exit status 0 only if every reading arrived and the device shows "confirmed".

    python -m host_sim.provision_demo --readings 5
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from host_sim.fleet import BoardProcess, FleetError, Subscriber, board_config, summarise
from host_sim.flash import board_command, prepare_flash
from host_sim.servers.mosquitto import Broker, BrokerError, free_port
from host_sim.servers.ntp import NtpServer
from tools import basestation as bsm

ROOT = Path(__file__).resolve().parent.parent
SUBSCRIBER = "sim-subscriber"
DEVICE_ID = "fresh-board"


def fresh_config(readings, interval_ms, beacon_port):
    cfg = board_config(DEVICE_ID, 1, readings, interval_ms)
    # Only WiFi and the pinned CA: the broker, the user name and the password come from
    # the base station once an operator approves the board.
    del cfg["mqtt"]
    cfg["tls"] = {"ca": ["ca.der"]}
    cfg["provisioning"] = {"beacon_port": beacon_port, "beacon_wait_ms": 10000,
                           "poll_min_ms": 500, "poll_max_ms": 2000, "wait_s": 60}
    return cfg


def cli(state, *args):
    return subprocess.run([sys.executable, "-m", "tools.basestation", "--state",
                           str(state)] + list(args), capture_output=True, text=True, timeout=60,
                          cwd=str(ROOT))


def wait_for(board, event, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = board.of(event)
        if found:
            return found[0]
        if board.finished():
            break
        time.sleep(0.1)
    raise FleetError("the board showed no %s within %ss" % (event, timeout))


def run(args):
    certs = Path(args.certs)
    needed = ["ca.pem", "ca.der", "server.pem", "server.key", SUBSCRIBER + ".crt.pem",
              "basestation-chain.pem", "basestation.key"]
    missing = [n for n in needed if not (certs / n).exists()]
    if missing:
        raise FleetError("missing in %s: %s; run `make certs`" % (certs, ", ".join(missing)))
    server_chain = certs / "server-chain.pem"
    beacon_port = free_port()
    board = None
    with tempfile.TemporaryDirectory(prefix="basestation-") as state, NtpServer() as ntp, \
            Broker(certs / "ca.pem", server_chain if server_chain.exists() else
                   certs / "server.pem", certs / "server.key", subscribers=[SUBSCRIBER],
                   password_listener=True) as broker:
        print("broker  mosquitto on 127.0.0.1:%d (certificates) and :%d (provisioned "
              "passwords)" % (broker.port, broker.password_port))
        station = bsm.BaseStation(state, certs / "basestation-chain.pem",
                                  certs / "basestation.key", certs / "ca.der",
                                  ("127.0.0.1", broker.password_port, "localhost"),
                                  bsm.MosquittoPasswords(broker.password_path, broker.proc.pid),
                                  beacon=("127.0.0.1", beacon_port), beacon_interval_s=1.0)
        subscriber = Subscriber(certs, broker.port)
        try:
            with station:
                print("base    https://127.0.0.1:%d, beacon on udp 127.0.0.1:%d"
                      % (station.port, beacon_port))
                flash = ROOT / ".sim" / DEVICE_ID
                # A fresh board: no credentials left on its flash from an earlier run.
                shutil.rmtree(flash, ignore_errors=True)
                prepare_flash(flash, fresh_config(args.readings, args.interval_ms, beacon_port),
                              {"ca.der": certs / "ca.der"})
                argv = board_command(flash, port="esp32", ntp="127.0.0.1:%d" % ntp.address[1],
                                     device_seed=DEVICE_ID)
                board = BoardProcess(DEVICE_ID, argv, args.verbose)
                print("board   %s started with WiFi settings and the pinned CA only" % DEVICE_ID)
                shown = wait_for(board, "provision_code", 30)
                listed = json.loads(cli(state, "list", "--json").stdout)["requests"]
                on_page = [r["code"] for r in listed if r["id"] == shown["request_id"]]
                print("operator: board shows code %s, base station shows %s"
                      % (shown["code"], on_page[0] if on_page else "nothing"))
                if on_page != [shown["code"]]:
                    raise FleetError("the codes differ: not approving")
                approved = cli(state, "approve", str(shown["request_id"]))
                print("operator: $ basestation approve %d\n          %s"
                      % (shown["request_id"], approved.stdout.strip() or approved.stderr.strip()))
                deadline = time.monotonic() + args.timeout
                while time.monotonic() < deadline and not board.finished():
                    time.sleep(0.2)
                settle = time.monotonic() + 5
                while time.monotonic() < settle and len(
                        subscriber.readings.get(DEVICE_ID, {})) < len(board.of("acked")):
                    time.sleep(0.1)
                devices = {d["device_id"]: d["status"] for d in station.store.devices()}
        finally:
            if board is not None:
                board.stop()
            subscriber.stop()
    print("base station: %s is %s" % (DEVICE_ID, devices.get(DEVICE_ID, "unknown")))
    ok = summarise([board], subscriber, args.readings)
    return 0 if ok and devices.get(DEVICE_ID) == "confirmed" else 1


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m host_sim.provision_demo",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=5, help="readings to deliver")
    parser.add_argument("--interval-ms", type=int, default=500, help="sampling interval")
    parser.add_argument("--certs", default=str(ROOT / "certs"), help="certificate directory")
    parser.add_argument("--timeout", type=float, default=90, help="seconds to wait")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every board event")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except (FleetError, BrokerError, bsm.BaseStationError) as exc:
        print("provision demo: %s" % exc, file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
