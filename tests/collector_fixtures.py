"""Helpers for the collector tests: a real PostgreSQL, a collector process, a report reader.

PostgreSQL 15 is started with initdb/pg_ctl in a temp dir on a free loopback port. As root,
initdb refuses to run, so the server runs as the ``postgres`` system user (``runuser``) with
the data dir owned by it; as a normal user it runs as that user.
"""

import glob
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from host_sim.servers.mosquitto import free_port

ROOT = Path(__file__).resolve().parent.parent


def pg_bin():
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL is not installed: run `make` (it apt-installs postgresql)",
                    pytrace=False)
    return Path(found[-1]).parent


class Postgres:
    def __init__(self):
        self.bin = pg_bin()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="securenode-pg-"))
        self.data = self.dir / "data"
        self.as_root = os.geteuid() == 0
        if self.as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            os.chmod(self.dir, 0o700)
        self.url = "postgresql://collector@127.0.0.1:%d/postgres" % self.port

    def _run(self, *argv):
        cmd = [str(self.bin / argv[0])] + list(argv[1:])
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--"] + cmd
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    def start(self):
        out = self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "collector",
                        "--no-sync", "-E", "UTF8")
        if out.returncode:
            raise RuntimeError("initdb failed: %s" % out.stderr)
        return self.resume()

    def resume(self):
        """Start the server on an existing data directory (after start() and pause())."""
        out = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-w",
                        "-o", "-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off "
                        "-c synchronous_commit=off" % (self.port, self.dir), "start")
        if out.returncode:
            raise RuntimeError("pg_ctl start failed: %s %s" % (out.stdout, out.stderr))
        return self

    def pause(self):
        """Stop the server, cutting every client off, keeping its data. Fast, not immediate:
        with synchronous_commit off an immediate stop may forget the latest commits."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def stop(self):
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of the test module's own (initdb in a temp dir); stopped after it."""
    pg = Postgres().start()
    yield pg
    pg.stop()


def reading_payload(device, seq):
    """A valid reading as a board publishes it, for feeding a collector directly."""
    return json.dumps({"id": device, "seq": seq, "timestamp": 1795600000, "status": 0,
                       "voltage": 230.0, "freq": 50.0}).encode()


def device_publisher(pki, port, device):
    """A paho client with the device's own certificate, connected to the broker's TLS
    listener and looping; the caller disconnects it (publish_readings sends through it)."""
    import paho.mqtt.client as mqtt

    dev = pki.device(device)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device, protocol=mqtt.MQTTv311)
    c.tls_set(ca_certs=str(pki.ca.cert_pem), certfile=str(dev.cert_pem),
              keyfile=str(dev.key_pem))
    c.max_inflight_messages_set(200)
    c.max_queued_messages_set(0)
    c.connect("localhost", port)
    c.loop_start()
    return c


def publish_readings(client, device, seqs):
    """Publish the readings ``seqs`` of ``device`` at QoS 1 and wait for every PUBACK."""
    infos = [client.publish("devices/%s/readings" % device, reading_payload(device, s), qos=1)
             for s in seqs]
    for info in infos:
        info.wait_for_publish(30)


class CollectorProcess:
    """tools/collector.py serve, as its own process (so a test can kill and restart it)."""

    def __init__(self, db, pki, broker_port=None, jsonl=False, client_id="collector", extra=()):
        argv = [sys.executable, str(ROOT / "tools" / "collector.py"), "serve", "--db", str(db),
                "--ca", str(pki.ca.cert_pem), "--cert", str(pki.subscriber.cert_pem),
                "--key", str(pki.subscriber.key_pem), "--client-id", client_id]
        if broker_port:
            argv += ["--broker", "127.0.0.1:%d" % broker_port]
        if jsonl:
            argv += ["--jsonl-port", "0", "--server-cert", str(pki.server.chain_pem),
                     "--server-key", str(pki.server.key_pem)]
        self.argv = argv + list(extra)
        self.db = db
        self.proc = None
        self.jsonl_port = None

    def start(self, timeout_s=20):
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            event = json.loads(line)
            if event["event"] == "jsonl_listening":
                self.jsonl_port = event["port"]
            if event["event"] == "collector_ready":
                return self
        raise RuntimeError("collector did not start: %s" % self.proc.stderr.read())

    def stop(self, sig=None):
        if self.proc and self.proc.poll() is None:
            if sig is None:
                self.proc.terminate()
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def report(db):
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "collector.py"), "report", "--db",
                          str(db), "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def device_report(db, device_id):
    for d in report(db)["devices"]:
        if d["device_id"] == device_id:
            return d
    return None


def proc_status(pid):
    """(threads, RSS in KiB) of a live process, from /proc/<pid>/status."""
    fields = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            name, _, value = line.partition(":")
            fields[name] = value.split()
    return int(fields["Threads"][0]), int(fields["VmRSS"][0])


def wait_until(predicate, timeout_s, what):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail("timed out after %ss waiting for %s" % (timeout_s, what))
