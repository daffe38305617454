"""Helpers for the provisioning tests: a broker with a password listener, a base station,
a device-side HTTPS client that can pick its source address, and the CLI."""

import http.client
import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

from host_sim.servers.mosquitto import Broker
from tools import basestation as bsm
from tools import certs

ROOT = Path(__file__).resolve().parent.parent
SUBSCRIBER = "test-subscriber"


class FakeClock:
    """The base station's clock, moved by the test: no sleeping through a 60 s window."""

    def __init__(self, start):
        self.now = start

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def base_station_cert(pki):
    if not (Path(pki.dir) / "basestation-chain.pem").exists():
        certs.make_server(pki.dir, name="basestation")
    return Path(pki.dir) / "basestation-chain.pem", Path(pki.dir) / "basestation.key"


def password_broker(pki):
    return Broker(pki.ca.cert_pem, pki.server.chain_pem, pki.server.key_pem,
                  subscribers=[SUBSCRIBER], password_listener=True)


def start_base_station(pki, broker, state_dir, clock=None, beacon=None, port=0, limits=None):
    """An in-process base station for `broker`; its ACL's user names are reserved ids."""
    chain, key = base_station_cert(pki)
    kwargs = {"beacon": beacon, "beacon_interval_s": 0.2, "port": port, "limits": limits}
    if clock is not None:
        kwargs["clock"] = clock
    return bsm.BaseStation(state_dir, chain, key, pki.ca.cert_der,
                           ("127.0.0.1", broker.password_port, "localhost"),
                           bsm.MosquittoPasswords(broker.password_path, broker.proc.pid,
                                                  acl_file=broker.workdir / "acl"),
                           **kwargs).start()


def post(pki, port, path, doc, source_ip="127.0.0.1", raw=None):
    """A device's request, verified against the pinned CA; returns (status, JSON)."""
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert_pem))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10,
                                       source_address=(source_ip, 0))
    try:
        body = raw if raw is not None else json.dumps(doc)
        conn.request("POST", path, body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def ask(pki, port, device_id="dev-1", name="Kitchen meter", nonce=None, source_ip="127.0.0.1"):
    nonce = nonce or os.urandom(16).hex()
    status, doc = post(pki, port, "/v1/auth/request", {
        "device_id": device_id, "name": name, "firmware": "0.1.0", "nonce": nonce},
        source_ip=source_ip)
    assert status == 202 and doc["status"] == "pending", (status, doc)
    return doc["request_id"], nonce


def poll(pki, port, request_id, device_id, nonce, source_ip="127.0.0.1"):
    return post(pki, port, "/v1/auth/request/%d" % request_id,
                {"device_id": device_id, "nonce": nonce}, source_ip=source_ip)


def cli(state_dir, *args, stdin=None):
    """Run `python -m tools.basestation --state DIR ...`; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "tools.basestation", "--state",
                           str(state_dir)] + list(args), input=stdin, capture_output=True,
                          text=True, timeout=60, cwd=str(ROOT))


def cli_list(state_dir):
    proc = cli(state_dir, "list", "--json", "--all")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def provisioning_config(port=None, beacon_port=None, wait_s=30, host="127.0.0.1"):
    section = {"port": port or 1, "poll_min_ms": 200, "poll_max_ms": 1000, "wait_s": wait_s,
               "beacon_wait_ms": 5000}
    if host is not None:
        section["host"] = host
    if beacon_port:
        section["beacon_port"] = beacon_port
    # Only WiFi: no MQTT host, no client certificate; the pinned CA is the only trust.
    return {"provisioning": section, "tls": {"ca": ["ca.der"]},
            "mqtt": {"keepalive_s": 60}, "backoff.min_ms": 200, "backoff.max_ms": 600}


def proc_status(pid):
    """(VmRSS kB, VmHWM kB, threads) of a running process, from /proc/<pid>/status."""
    fields = {}
    with open("/proc/%d/status" % pid) as status:
        for line in status:
            key, _, value = line.partition(":")
            fields[key] = value.split()[0] if value.split() else ""
    return int(fields["VmRSS"]), int(fields["VmHWM"]), int(fields["Threads"])


class StationProcess:
    """`python -m tools.basestation serve` as a real process on a free loopback port.

    Its log goes to a file (``log_text()``); ``status()`` reads its RSS and thread count.
        with StationProcess(pki, broker, tmp_path / "s", "--request-deadline", "2") as bs:
            post(pki, bs.port, "/v1/auth/request", {...})
    """

    def __init__(self, pki, broker, state_dir, *serve_args, password=None):
        self.state = Path(state_dir)
        made = cli(self.state, "operator-password",
                   stdin=(password or "not the operator password") + "\n")
        assert made.returncode == 0, made.stderr
        chain, key = base_station_cert(pki)
        self.pid_file = self.state.parent / (self.state.name + "-broker.pid")
        self.pid_file.write_text("%d\n" % broker.proc.pid)
        self.log_path = self.state.parent / (self.state.name + ".log")
        self._log = open(self.log_path, "wb")
        argv = [sys.executable, "-m", "tools.basestation", "--state", str(self.state), "serve",
                "--cert", str(chain), "--key", str(key), "--ca", str(pki.ca.cert_der),
                "--port", "0", "--mqtt-port", str(broker.password_port),
                "--mqtt-server-hostname", "localhost",
                "--password-file", str(broker.password_path),
                "--mosquitto-pid-file", str(self.pid_file),
                "--acl-file", str(broker.workdir / "acl")] + list(serve_args)
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._log,
                                     cwd=str(ROOT))
        line = self.proc.stdout.readline().decode()
        if not line.startswith("basestation: https://"):
            self.stop()
            raise AssertionError("base station did not start: %r\n%s" % (line, self.log_text()))
        self.port = int(line.split()[1].rsplit(":", 1)[1])

    def status(self):
        return proc_status(self.proc.pid)

    def log_text(self):
        return self.log_path.read_text(errors="replace")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self._log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
