"""tools/collector.py under attack, against a real Mosquitto (TLS, persistence, every listener)
and the collector as its own process: poison messages, a stolen session, a dead database.

Each test states what must hold: nothing acknowledged is lost, storage goes on, the process
either keeps serving or exits with one clear line.
"""

import json
import socket
import ssl
import subprocess
import sys
import time

import paho.mqtt.client as mqtt
import pytest

from collector_fixtures import (ROOT, CollectorProcess, Postgres, device_report, proc_status,
                                report, wait_until)
from conftest import SUBSCRIBER
from host_sim.servers.mosquitto import Broker
from tools.collector_store import Store


@pytest.fixture(scope="module")
def any_broker(pki):
    """Every listener (certificate, password, websockets) and persistent sessions."""
    with Broker(pki.ca.cert_pem, pki.server.chain_pem, pki.server.key_pem,
                subscribers=[SUBSCRIBER], password_listener=True, websockets=True,
                persistence=True) as running:
        yield running


def reading(device, seq, **over):
    r = {"id": device, "seq": seq, "timestamp": 1795600000, "status": 0, "voltage": 230.0,
         "freq": 50.0}
    r.update(over)
    return json.dumps(r).encode()


def client(pki, port, client_id, cert=None, clean=True, transport="tcp", user=None):
    """A connected paho client; cert is a device id whose certificate it presents."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                    clean_session=clean, protocol=mqtt.MQTTv311, transport=transport)
    if cert:
        dev = pki.device(cert)
        c.tls_set(ca_certs=str(pki.ca.cert_pem), certfile=str(dev.cert_pem),
                  keyfile=str(dev.key_pem))
    else:
        c.tls_set(ca_certs=str(pki.ca.cert_pem))
    if user:
        c.username_pw_set(*user)
    connected = []
    c.on_connect = lambda cl, u, f, rc, p: connected.append(rc)
    c.connect("localhost", port, keepalive=30)
    c.loop_start()
    wait_until(lambda: connected, 10, "CONNACK for %s" % client_id)
    assert connected[0] == 0, "refused: %s" % connected[0]
    return c


def publish_all(c, items, retain=False):
    for topic, payload in items:
        c.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)


def close(c):
    c.disconnect()
    c.loop_stop()


POISON = [
    # (what, topic suffix, payload, part of the stored reason)
    ("400-digit voltage", "readings",
     b'{"id":"%s","seq":2,"timestamp":1,"status":0,"voltage":' + b"9" * 400 + b',"freq":50}',
     "voltage must be a finite number, got an integer of 400 digits"),
    ("4 KB of nested arrays", "readings", b"[" * 4000, "nested too deeply"),
    ("dropped of 10**30", "status", b'{"status":"online","dropped":' + b"1" + b"0" * 30 + b"}",
     "dropped must be an integer from 0 to 2**63-1"),
    ("invalid UTF-8 with a NUL", "readings", b'{"id":"\xff\x00"}', "not JSON"),
    ("seq true", "readings", b'{"id":"%s","seq":true,"timestamp":1,"status":0,"voltage":1,'
                             b'"freq":50}', "seq must be an integer"),
]


def test_poison_messages_become_rejects_and_storage_goes_on_across_restarts(tmp_path, pki,
                                                                           any_broker):
    device = "poison-1"
    db = tmp_path / "r.db"
    col = CollectorProcess(db, pki, any_broker.port).start()
    dev = client(pki, any_broker.port, device, cert=device)
    try:
        items = [("devices/%s/readings" % device, reading(device, 1))]
        for _, kind, payload, _ in POISON:
            items.append(("devices/%s/%s" % (device, kind), payload.replace(b"%s", device.encode())))
        items += [("devices/%s/readings" % device, reading(device, seq)) for seq in range(2, 21)]
        publish_all(dev, items)
        d = wait_until(lambda: (device_report(db, device) or {}).get("stored") == 20
                       and device_report(db, device), 20, "20 good readings stored")
        assert d["gaps"] == [] and d["dropped"] == 0
        assert col.proc.poll() is None, "the collector died: %s" % col.proc.stderr.read()
        rejects = wait_until(lambda: len(_rejects(db, device)) == len(POISON)
                             and _rejects(db, device), 10, "one reject per poison message")
        for (what, _, _, reason), (source, _, payload, stored_reason) in zip(POISON, rejects):
            assert source == "mqtt" and reason in stored_reason, (what, stored_reason)
        # Acknowledged: a new collector process on the same session gets none of them again.
        col.stop()
        col = CollectorProcess(db, pki, any_broker.port).start()
        publish_all(dev, [("devices/%s/readings" % device, reading(device, 21))])
        wait_until(lambda: (device_report(db, device) or {}).get("stored") == 21, 20,
                   "reading 21 after the restart")
        assert len(_rejects(db, device)) == len(POISON)
    finally:
        close(dev)
        col.stop()


def test_a_retained_poison_status_does_not_stop_a_new_collector(tmp_path, pki, any_broker):
    device = "poison-retained"
    dev = client(pki, any_broker.port, device, cert=device)
    topic = "devices/%s/status" % device
    publish_all(dev, [(topic, b'{"dropped":' + b"9" * 31 + b"}")], retain=True)
    db = tmp_path / "fresh.db"
    col = CollectorProcess(db, pki, any_broker.port).start()
    try:
        publish_all(dev, [("devices/%s/readings" % device, reading(device, seq))
                          for seq in (1, 2, 3)])
        wait_until(lambda: (device_report(db, device) or {}).get("stored") == 3, 20,
                   "readings after the retained poison")
        assert "dropped must be an integer" in _rejects(db, device)[0][3]
        assert col.proc.poll() is None
    finally:
        publish_all(dev, [(topic, b"")], retain=True)  # clears the retained message
        close(dev)
        col.stop()


def test_a_dead_database_ends_the_collector_with_one_line_and_loses_nothing(pki, any_broker):
    pg = Postgres().start()
    device = "pg-dies"
    dev = client(pki, any_broker.port, device, cert=device)
    col = CollectorProcess(pg.url, pki, any_broker.port).start()
    try:
        publish_all(dev, [("devices/%s/readings" % device, reading(device, 1))])
        wait_until(lambda: (device_report(pg.url, device) or {}).get("stored") == 1, 20,
                   "reading 1")
        pg.pause()
        publish_all(dev, [("devices/%s/readings" % device, reading(device, 2))])
        code = col.proc.wait(30)
        err = col.proc.stderr.read().strip()
        assert code == 1, err
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert err.startswith("collector: MQTT consumer stopped: StoreError"), err
        # The reading was never acknowledged: the broker hands it to the next collector.
        pg.resume()
        col = CollectorProcess(pg.url, pki, any_broker.port).start()
        d = wait_until(lambda: (device_report(pg.url, device) or {}).get("stored") == 2
                       and device_report(pg.url, device), 20, "reading 2 after the restart: %s %s"
                       % (report(pg.url), _rejects(pg.url, device)))
        assert d["gaps"] == []
    finally:
        close(dev)
        col.stop()
        pg.stop()


def _rejects(db, device):
    store = Store(str(db), create=False)
    try:
        return [r for r in store.rejects() if r[1] == device]
    finally:
        store.close()


def _password_user(broker, user, password):
    out = subprocess.run(["mosquitto_passwd", str(broker.password_path), user],
                         input="%s\n%s\n" % (password, password), capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    broker.reload()
    time.sleep(0.5)


@pytest.mark.parametrize("listener", ["certificate", "password", "websockets"])
def test_no_certificate_or_login_can_wipe_the_collectors_session(listener, tmp_path, pki,
                                                                any_broker):
    device = "takeover-src-%s" % listener
    db = tmp_path / "r.db"
    col = CollectorProcess(db, pki, any_broker.port).start()
    col.stop()     # down, its persistent session keeps queueing for it
    dev = client(pki, any_broker.port, device, cert=device)
    publish_all(dev, [("devices/%s/readings" % device, reading(device, seq))
                      for seq in range(1, 201)])
    close(dev)
    attacker = "takeover-evil-%s" % listener
    for victim_id in ("collector", SUBSCRIBER):  # the id it asks for, the id it is bound to
        if listener == "certificate":
            c = client(pki, any_broker.port, victim_id, cert=attacker)
        elif listener == "websockets":
            c = client(pki, any_broker.websockets_port, victim_id, cert=attacker,
                       transport="websockets")
        else:
            _password_user(any_broker, attacker, "pw-" + attacker)
            c = client(pki, any_broker.password_port, victim_id,
                       user=(attacker, "pw-" + attacker))
        close(c)
    # The broker renamed each attempt to the attacker's own identity.
    log = any_broker.log()
    assert "as %s (" % attacker in log and "as collector (" not in log, log[-2000:]
    col = CollectorProcess(db, pki, any_broker.port).start()
    try:
        d = wait_until(lambda: (device_report(db, device) or {}).get("stored") == 200
                       and device_report(db, device), 30, "all 200 queued readings")
        assert d["gaps"] == []
    finally:
        col.stop()


# --- the JSON-lines listener: slow clients, floods, caps ----------------------------------

def _tls_client(pki, port, device, source="127.0.0.1", timeout=10):
    dev = pki.device(device)
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert_pem))
    ctx.load_cert_chain(str(dev.cert_pem), str(dev.key_pem))
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                   source_address=(source, 0))
    return ctx.wrap_socket(raw, server_hostname="localhost")


def _send_reading(pki, port, device, seq, source="127.0.0.1"):
    """One reading over a fresh connection; returns (answer, seconds it took)."""
    t0 = time.monotonic()
    with _tls_client(pki, port, device, source) as tls:
        f = tls.makefile("rwb")
        f.write(reading(device, seq) + b"\n")
        f.flush()
        return json.loads(f.readline()), time.monotonic() - t0


def _closed_by_peer(sock, within_s):
    """True if the peer closes sock within within_s (EOF or reset), False if still open."""
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except socket.timeout:
        return False
    except OSError:
        return True


def test_slow_clients_cost_no_threads_and_are_cut_off_while_a_board_is_served(tmp_path, pki):
    # asyncio gives each TLS connection a 256 KiB buffer: memory is bounded by the cap.
    col = CollectorProcess(tmp_path / "r.db", pki, jsonl=True, extra=[
        "--jsonl-handshake-s", "2", "--jsonl-line-s", "2", "--jsonl-max-clients", "100",
        "--jsonl-max-per-address", "90"]).start()
    pid, port = col.proc.pid, col.jsonl_port
    silent, trickling = [], []
    try:
        threads0, rss0 = proc_status(pid)
        # 30 clients start a line and trickle it; 300 TCP connections never start TLS
        # (60 fit under the per-address cap, the rest are closed at once).
        for n in range(30):
            tls = _tls_client(pki, port, "slow-%d" % n)
            tls.sendall(b'{"id": "slow-%d", ' % n)
            trickling.append(tls)
        silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(300)]
        time.sleep(0.5)
        threads, rss = proc_status(pid)
        answer, took_s = _send_reading(pki, port, "jsonl-legit", 1, source="127.0.0.2")
        assert answer == {"ack": 1} and took_s < 5, (answer, took_s)
        assert threads <= threads0 + 1, (threads0, threads)
        assert rss - rss0 < 40 * 1024, "RSS grew by %d KiB for 330 clients" % (rss - rss0)
        # A byte every half second keeps nothing alive: each line has 2 s to end.
        t0 = time.monotonic()
        open_tricklers = list(trickling)
        while open_tricklers and time.monotonic() - t0 < 8:
            for tls in list(open_tricklers):
                try:
                    tls.sendall(b" ")
                except OSError:
                    open_tricklers.remove(tls)
            time.sleep(0.5)
        cut_after_s = time.monotonic() - t0
        assert not open_tricklers and cut_after_s < 6, cut_after_s
        assert all(_closed_by_peer(s, 3) for s in silent), "a silent connection outlived 2 s"
        answer, _ = _send_reading(pki, port, "jsonl-legit", 2)
        assert answer == {"ack": 2}
        assert device_report(col.db, "jsonl-legit")["stored"] == 2
        assert proc_status(pid)[0] <= threads0 + 1
    finally:
        for s in silent + trickling:
            s.close()
        col.stop()


def test_connection_caps_refuse_a_flood_before_tls_and_serve_other_addresses(tmp_path, pki):
    col = CollectorProcess(tmp_path / "r.db", pki, jsonl=True, extra=[
        "--jsonl-handshake-s", "30", "--jsonl-max-clients", "8",
        "--jsonl-max-per-address", "5"]).start()
    port = col.jsonl_port
    held = []
    try:
        held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(5)]
        time.sleep(0.3)
        assert not any(_closed_by_peer(s, 0.2) for s in held), "held within the cap"
        extra = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert _closed_by_peer(extra, 2), "a 6th connection from one address was kept"
        extra.close()
        # Another address is still served while 127.0.0.1 is at its cap.
        assert _send_reading(pki, port, "jsonl-cap", 1, source="127.0.0.2")[0] == {"ack": 1}
        # That client has closed; the server frees its place once it reads the EOF. Until
        # then it still counts, and would refuse one of the three below instead of the 9th.
        time.sleep(1.0)
        held += [socket.create_connection(("127.0.0.1", port), timeout=5,
                                          source_address=("127.0.0.3", 0)) for _ in range(3)]
        time.sleep(0.3)
        assert not any(_closed_by_peer(s, 0.2) for s in held), "8 in all are within the cap"
        over = socket.create_connection(("127.0.0.1", port), timeout=5,
                                        source_address=("127.0.0.4", 0))
        assert _closed_by_peer(over, 2), "a 9th connection in all was kept"
        over.close()
        for s in held:
            s.close()
        held = []
        time.sleep(0.5)   # the server sees them go and frees their places
        assert _send_reading(pki, port, "jsonl-cap", 2)[0] == {"ack": 2}
    finally:
        for s in held:
            s.close()
        col.stop()


@pytest.mark.parametrize("line, reason", [
    (b"[" * 4000, "nested too deeply"),
    (b'{"id":"jsonl-poison","seq":1,"timestamp":1,"status":0,"voltage":' + b"9" * 400
     + b',"freq":50}', "integer of 400 digits"),
    (b'{"status":"online","dropped":' + b"9" * 31 + b"}", "dropped must be an integer"),
])
def test_jsonl_poison_is_nacked_kept_and_the_connection_goes_on(line, reason, tmp_path, pki):
    col = CollectorProcess(tmp_path / "r.db", pki, jsonl=True).start()
    try:
        with _tls_client(pki, col.jsonl_port, "jsonl-poison") as tls:
            f = tls.makefile("rwb")
            for out in (line, reading("jsonl-poison", 5)):
                f.write(out + b"\n")
                f.flush()
            first, second = json.loads(f.readline()), json.loads(f.readline())
        assert first.get("reason") == "rejected" and second == {"ack": 5}, (first, second)
        assert reason in _rejects(col.db, "jsonl-poison")[0][3]
        assert col.proc.poll() is None
    finally:
        col.stop()


def test_a_jsonl_line_over_4096_bytes_is_kept_as_a_reject_and_the_connection_closed(tmp_path,
                                                                                   pki):
    col = CollectorProcess(tmp_path / "r.db", pki, jsonl=True).start()
    try:
        with _tls_client(pki, col.jsonl_port, "jsonl-long") as tls:
            tls.sendall(b"x" * 6000 + b"\n")
            assert _closed_by_peer(tls, 5), "a 6000-byte line was read on"
        assert "line longer than 4096 bytes" in _rejects(col.db, "jsonl-long")[0][3]
        assert _send_reading(pki, col.jsonl_port, "jsonl-long", 1)[0] == {"ack": 1}
    finally:
        col.stop()


def test_a_dead_database_behind_the_jsonl_listener_ends_the_collector_unacked(tmp_path, pki):
    pg = Postgres().start()
    col = CollectorProcess(pg.url, pki, jsonl=True).start()
    try:
        assert _send_reading(pki, col.jsonl_port, "jsonl-pg", 1)[0] == {"ack": 1}
        pg.pause()
        with _tls_client(pki, col.jsonl_port, "jsonl-pg") as tls:
            f = tls.makefile("rwb")
            f.write(reading("jsonl-pg", 2) + b"\n")
            f.flush()
            assert f.readline() == b"", "a reading the database never took was answered"
        code = col.proc.wait(30)
        err = col.proc.stderr.read().strip()
        assert code == 1 and len(err.splitlines()) == 1, err
        assert err.startswith("collector: JSON-lines listener: storage failed: "), err
    finally:
        col.stop()
        pg.stop()


# --- careless command lines: one line, no traceback ---------------------------------------

def _collector_cli(*argv):
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "collector.py")] + list(argv),
                         capture_output=True, text=True, timeout=60)
    return out.returncode, out.stdout, out.stderr


@pytest.mark.parametrize("case", ["no --ca", "missing --ca file", "--db in a missing directory",
                                  "report of a missing --db", "report of a non-database"])
def test_careless_collector_command_lines_get_one_line(case, tmp_path, pki):
    serve = ["serve", "--broker", "127.0.0.1:1", "--cert", str(pki.subscriber.cert_pem),
             "--key", str(pki.subscriber.key_pem)]
    ca = ["--ca", str(pki.ca.cert_pem)]
    argv, expect = {
        "no --ca": (serve + ["--db", str(tmp_path / "r.db")], "--ca is required"),
        "missing --ca file": (serve + ["--ca", str(tmp_path / "nope.pem"), "--db",
                                       str(tmp_path / "r.db")], "nope.pem: no such file"),
        "--db in a missing directory": (serve + ca + ["--db", str(tmp_path / "no" / "r.db")],
                                        "unable to open database file"),
        "report of a missing --db": (["report", "--db", str(tmp_path / "absent.db")],
                                     "no such database file"),
        "report of a non-database": (["report", "--db", str(pki.ca.cert_pem)],
                                     "not a database"),
    }[case]
    code, out, err = _collector_cli(*argv)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("collector: ") and expect in err and "Traceback" not in err, err
    assert not (tmp_path / "absent.db").exists()
