"""Cost of one QoS 1 reading: the board's MQTT link (mqtt_codec + mqtt_link) against the
baseline it replaced, micropython-lib's umqtt.simple 1.3.4 (tests/vendor, `make` fetches it).

Both publish the same reading (topic devices/board-1/readings, an 89-byte JSON) and wait for
its PUBACK, on the real MicroPython unix port (.venv/bin/micropython), over an in-memory
stream that answers each PUBLISH with its PUBACK. Measured per reading: stream writes (each
write on a TLS socket is one TLS record), bytes written, bytes on a TLS 1.2 AES-GCM wire
(29 bytes of record overhead per write, both directions: what a board negotiates with
Mosquitto, shared/PORT_FACTS.md), GC heap bytes allocated (gc.mem_alloc with the collector
off) and microseconds.

    .venv/bin/python tests/bench/bench_mqtt.py      (a few seconds)
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MICROPYTHON = ROOT / ".venv" / "bin" / "micropython"
UMQTT = ROOT / "tests" / "vendor" / "umqtt" / "simple.py"
RESULTS = Path(__file__).resolve().parent / "results" / "mqtt.md"
MODULES = ("mqtt_link", "mqtt_codec", "link_error", "net", "events", "__init__", "pinned_tls",
           "clock")
# The umqtt.simple adapter the board ran before this codec, for its resident size.
OLD_ADAPTER = "87d7728^:firmware/securenode/mqtt_link.py"
TLS12_GCM_RECORD = 29  # 5-byte header + 8-byte explicit nonce + 16-byte tag
ROUNDS = 2000

SCRIPT = r'''
import gc, json, sys, time
sys.path.insert(0, "lib")
from umqtt import simple as umqtt
from securenode.mqtt_link import MqttLink

TOPIC = b"devices/board-1/readings"
PAYLOAD = (b'{"id":"board-1","seq":123456,"timestamp":1795699570,"status":0,'
           b'"voltage":230.1,"freq":50.01}')
ROUNDS = %d

class Peer:
    """Answers each PUBLISH written to it with the PUBACK for its packet id."""
    def __init__(self):
        self.writes = 0
        self.written = 0
        self.inq = bytearray(4)
        self.pos = 4
        self.last = bytearray(4)
    def _answer(self, n):
        if self.pos >= 4:
            self.pid += 1 if self.pid < 65535 else -65534
            self.inq[0] = 0x40; self.inq[1] = 2
            self.inq[2] = self.pid >> 8; self.inq[3] = self.pid & 255
            self.pos = 0
        data = bytes(self.inq[self.pos:self.pos + n])
        self.pos += n
        return data
    pid = 0

class UmqttStream(Peer):
    def write(self, buf, n=None):
        data = memoryview(buf)[:n] if n is not None else buf
        self.writes += 1
        self.written += len(data)
        return len(data)
    def read(self, n):
        return self._answer(n)
    def setblocking(self, flag):
        pass

class LinkStream(Peer):
    def write(self, buf, n, timeout_ms):
        self.writes += 1
        self.written += n
    def read(self, n, timeout_ms):
        return self._answer(n)
    def close(self):
        pass

def run(name, publish, stream):
    for _ in range(20):
        publish()  # warm up: first-call allocations are not per reading
    stream.writes = stream.written = 0
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    t0 = time.ticks_us()
    for _ in range(ROUNDS):
        publish()
    us = time.ticks_diff(time.ticks_us(), t0)
    allocated = gc.mem_alloc() - before
    gc.enable()
    return {"name": name, "writes": stream.writes / ROUNDS, "written": stream.written / ROUNDS,
            "alloc": allocated / ROUNDS, "us": us / ROUNDS}

out = []
s = UmqttStream()
client = umqtt.MQTTClient(b"board-1", "broker")
client.sock = s
out.append(run("umqtt.simple 1.3.4", lambda: client.publish(TOPIC, PAYLOAD, qos=1), s))

s = LinkStream()
link = MqttLink(b"board-1", "broker", 8883, None, 60, 5000, 5000)
link._stream = s  # as connect() leaves it
out.append(run("securenode mqtt_link", lambda: link.publish(TOPIC, PAYLOAD), s))

print(json.dumps(out))
''' % ROUNDS

RESIDENT = r'''
import gc, json, sys
sys.path.insert(0, "lib")
from securenode import pinned_tls, events  # resident on every board either way
gc.collect()
base = gc.mem_alloc()
if WHICH == "umqtt":
    from umqtt import simple as umqtt
    obj = umqtt.MQTTClient(b"board-1", "broker")
elif WHICH == "old":
    from securenode.mqtt_link_old import MqttLink
    obj = MqttLink(b"board-1", "broker", 8883, None, 60, 5000, 5000)
else:
    from securenode.mqtt_link import MqttLink
    obj = MqttLink(b"board-1", "broker", 8883, None, 60, 5000, 5000)
gc.collect()
print(json.dumps(gc.mem_alloc() - base))
'''


def _flash(tmp):
    tmp = Path(tmp)
    for name in MODULES:
        target = tmp / "securenode" / ("%s.py" % name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text((ROOT / "firmware" / "securenode" / ("%s.py" % name)).read_text())
    old = subprocess.run(["git", "show", OLD_ADAPTER], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    (tmp / "securenode" / "mqtt_link_old.py").write_text(old)
    (tmp / "lib" / "umqtt").mkdir(parents=True, exist_ok=True)
    (tmp / "lib" / "umqtt" / "simple.py").write_text(UMQTT.read_text())
    return tmp


def _run(tmp, code):
    (Path(tmp) / "bench.py").write_text(code)
    proc = subprocess.run([str(MICROPYTHON), "bench.py"], cwd=tmp, capture_output=True,
                          text=True, timeout=300)
    if proc.returncode != 0:
        raise SystemExit("bench_mqtt: MicroPython failed:\n" + proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
    for needed in (MICROPYTHON, UMQTT):
        if not needed.exists():
            raise SystemExit("bench_mqtt: %s is missing: run `make`" % needed)
    with tempfile.TemporaryDirectory() as tmp:
        flash = _flash(tmp)
        rows = _run(flash, SCRIPT)
        resident = {which: _run(flash, RESIDENT.replace("WHICH", repr(which)))
                    for which in ("umqtt", "old", "link")}
    lines = ["# One QoS 1 reading: the board's MQTT link vs umqtt.simple (baseline)", "",
             "Real MicroPython unix port, %d readings over an in-memory stream that answers "
             "each PUBLISH with its PUBACK; the reading is an 89-byte JSON on "
             "`devices/board-1/readings`. Wire bytes assume TLS 1.2 AES-GCM (what a board "
             "negotiates with Mosquitto): %d bytes of record overhead per write, the PUBACK "
             "(4 bytes) in one record back." % (ROUNDS, TLS12_GCM_RECORD), "",
             "| client | writes (TLS records) per reading | MQTT bytes written | TLS bytes on "
             "the wire, both ways | GC bytes allocated per reading | us per reading |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        wire = row["written"] + row["writes"] * TLS12_GCM_RECORD + 4 + TLS12_GCM_RECORD
        lines.append("| %s | %.0f | %.0f | %.0f | %.0f | %.1f |" % (
            row["name"], row["writes"], row["written"], wire, row["alloc"], row["us"]))
    lines += ["", "GC heap kept after importing the client from .py source and making one "
              "client object (pinned_tls and events loaded before, as on every board): "
              "umqtt.simple alone %d bytes; the adapter the board ran before (umqtt.simple + "
              "`mqtt_link` at %s) %d bytes; the board's link now (mqtt_link + mqtt_codec, no "
              "umqtt) %d bytes, of which 768 are its preallocated 256-byte send buffer and "
              "512-byte receive bound. From .mpy the figures are about the same on this "
              "port (bytecode is still copied into the heap); frozen into a firmware image "
              "or run from ROMFS it stays in flash. The link's error sentences are in "
              "mqtt_errors, imported only when one is said."
              % (resident["umqtt"], OLD_ADAPTER.split(":")[0], resident["old"],
                 resident["link"]), "",
              "umqtt.simple writes a PUBLISH in several stream writes (header, topic length, "
              "topic, packet id, payload), each its own TLS record on a board, and reads the "
              "PUBACK byte by byte; the link encodes into its preallocated buffer and writes "
              "once. The board used to run umqtt.simple behind an adapter that gathered "
              "those writes (167 bytes per reading, `wss.md`)."]
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
