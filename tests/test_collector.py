"""tools/collector.py: validation, dedupe by (device, seq), report, rejects; SQLite and a real
PostgreSQL; MQTTS ingest through a real Mosquitto; the JSON-line TLS protocol."""

import json
import socket
import ssl
import time

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector_fixtures import CollectorProcess, Postgres, device_report, report, wait_until
from tools import collector

GOOD = {"id": "b1", "seq": 1, "timestamp": 1795600000, "status": 0, "voltage": 230.1,
        "freq": 50.01}


def reading(seq, device="b1", **over):
    r = dict(GOOD, id=device, seq=seq)
    r.update(over)
    return json.dumps(r).encode()


@pytest.fixture(scope="module")
def postgres():
    pg = Postgres().start()
    yield pg
    pg.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = collector.Store(str(tmp_path / "r.db"))
    else:
        pg = request.getfixturevalue("postgres")
        s = collector.Store(pg.url)
        with s.lock:
            cur = s.db.cursor()
            for table in ("readings", "devices", "rejects"):
                cur.execute("DELETE FROM %s" % table)
            s.db.commit()
    yield s
    s.close()


@pytest.mark.parametrize("payload, reason", [
    (b"{not json", "not JSON"),
    (b"[1, 2]", "not a JSON object"),
    (reading(1, device="b2"), "does not match the sender"),
    (reading(0), "seq must be >= 1"),
    (reading("7"), "seq must be an integer from 0 to 2\\*\\*63-1"),
    (reading(1, voltage=None), "voltage must be a finite number"),
    (b'{"id":"b1","seq":1,"timestamp":1,"status":0,"voltage":NaN,"freq":50}',
     "voltage must be a finite number"),
    (b"x" * 5000, "exceeds 4096"),
])
def test_invalid_readings_are_rejected_with_a_reason(payload, reason):
    with pytest.raises(collector.Rejected, match=reason):
        collector.validate("b1", payload)


def test_duplicates_are_absorbed_and_counted_and_gaps_reported(store):
    for seq in (1, 2, 2, 3, 6, 6, 6, 9):
        collector.handle_message(store, "mqtt", "devices/b1/readings", reading(seq))
    collector.handle_message(store, "mqtt", "devices/b1/status",
                             b'{"status":"online","dropped":4,"torn":1}')
    collector.handle_message(store, "mqtt", "devices/b1/readings", b"{oops")
    r = store.report()
    d = r["devices"][0]
    assert (d["device_id"], d["stored"], d["duplicates"]) == ("b1", 5, 3)
    assert d["gaps"] == [[4, 5], [7, 8]]
    assert (d["dropped"], d["torn"]) == (4, 1)
    assert r["rejects"] == 1 and d["last_seen"] > time.time() - 60
    assert store.seqs("b1") == [1, 2, 3, 6, 9]


def test_an_unforeseen_failure_is_kept_as_a_reject_and_storage_goes_on(store, monkeypatch):
    from tools import collector_store

    real = collector_store.validate
    monkeypatch.setattr(collector_store, "validate",
                        lambda device, payload: {}["no such field"])  # a bug nobody foresaw
    assert collector.handle_message(store, "mqtt", "devices/b1/readings", reading(1)) \
        == "rejected"
    monkeypatch.setattr(collector_store, "validate", real)
    assert collector.handle_message(store, "mqtt", "devices/b1/readings", reading(2)) \
        == "stored"
    assert store.rejects()[0][3] == "unexpected KeyError: 'no such field'"


def test_a_stale_status_never_lowers_the_dropped_count(store):
    collector.handle_message(store, "mqtt", "devices/b1/status", b'{"dropped":7}')
    collector.handle_message(store, "mqtt", "devices/b1/status", b'{"status":"offline"}')
    assert store.report()["devices"][0]["dropped"] == 7


def test_reject_table_keeps_payload_and_reason(store):
    collector.handle_message(store, "mqtt", "devices/b1/readings", b"{oops")
    with store.lock:
        cur = store.db.cursor()
        cur.execute("SELECT source, device_id, payload, reason FROM rejects")
        rows = cur.fetchall()
        store.db.commit()
    assert rows[0][:3] == ("mqtt", "b1", "{oops") and rows[0][3].startswith("not JSON")


def test_report_command_prints_a_table_and_json(tmp_path, capsys):
    db = tmp_path / "r.db"
    s = collector.Store(str(db))
    for seq in (1, 3):
        collector.handle_message(s, "mqtt", "devices/b1/readings", reading(seq))
    s.close()
    assert collector.main(["report", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "b1" in out and "rejects: 0" in out and " 2 " in out
    assert report(db)["devices"][0]["gaps"] == [[2, 2]]


def test_bad_postgresql_url_is_one_line_not_a_traceback(capsys):
    port = collector_free_port()
    code = collector.main(["report", "--db", "postgresql://nobody@127.0.0.1:%d/x" % port])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("collector: cannot connect to PostgreSQL") and "Traceback" not in err


def collector_free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _device_client(pki, device_id, port):
    dev = pki.device(device_id)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id,
                    protocol=mqtt.MQTTv311)
    c.tls_set(ca_certs=str(pki.ca.cert_pem), certfile=str(dev.cert_pem),
              keyfile=str(dev.key_pem))
    c.connect("localhost", port)
    c.loop_start()
    return c


@pytest.mark.parametrize("db_kind", ["sqlite", "postgresql"])
def test_mqtt_ingest_stores_each_seq_once_even_when_resent(db_kind, tmp_path, pki, broker,
                                                          request):
    db = tmp_path / "r.db" if db_kind == "sqlite" else request.getfixturevalue("postgres").url
    if db_kind == "postgresql":
        s = collector.Store(db)
        with s.lock:
            cur = s.db.cursor()
            for table in ("readings", "devices", "rejects"):
                cur.execute("DELETE FROM %s" % table)
            s.db.commit()
        s.close()
    device = "coll-mqtt-%s" % db_kind
    col = CollectorProcess(db, pki, broker.port, client_id="collector-%s" % db_kind).start()
    try:
        dev = _device_client(pki, device, broker.port)
        # A resend from another client library carries a new packet id: dedupe is by seq.
        for seq in (1, 2, 3, 2, 3, 4):
            dev.publish("devices/%s/readings" % device, reading(seq, device=device),
                        qos=1).wait_for_publish(5)
        dev.publish("devices/%s/readings" % device, b"garbage", qos=1).wait_for_publish(5)
        d = wait_until(lambda: (device_report(db, device) or {}).get("duplicates") == 2
                       and device_report(db, device), 20, "4 stored + 2 duplicates")
        assert d["stored"] == 4 and d["gaps"] == []
        assert report(db)["rejects"] >= 1
        dev.loop_stop()
        dev.disconnect()
    finally:
        col.stop()


def test_jsonl_protocol_acks_each_line_and_nacks_invalid_ones(tmp_path, pki):
    db = tmp_path / "r.db"
    col = CollectorProcess(db, pki, jsonl=True).start()
    try:
        dev = pki.device("coll-jsonl")
        ctx = ssl.create_default_context(cafile=str(pki.ca.cert_pem))
        ctx.load_cert_chain(str(dev.cert_pem), str(dev.key_pem))
        with socket.create_connection(("127.0.0.1", col.jsonl_port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                f = tls.makefile("rwb")
                answers = []
                for line in (reading(1, device="coll-jsonl"), reading(1, device="coll-jsonl"),
                             reading(2, device="someone-else"), b'{"ping":1}',
                             b'{"status":"online","dropped":3}'):
                    f.write(line + b"\n")
                    f.flush()
                    answers.append(json.loads(f.readline()))
        assert answers == [{"ack": 1}, {"ack": 1}, {"nack": 2, "reason": "rejected"},
                           {"pong": 1}, {"ack": "status"}]
        d = device_report(db, "coll-jsonl")
        assert (d["stored"], d["duplicates"], d["dropped"]) == (1, 1, 3)
    finally:
        col.stop()


def test_board_on_the_jsonl_transport_delivers_through_the_collector(tmp_path, pki, launch,
                                                                      broker):
    db = tmp_path / "r.db"
    col = CollectorProcess(db, pki, jsonl=True).start()
    try:
        board = launch("board-jsonl", broker.port, config={
            "transport": "jsonl", "jsonl": {"host": "localhost", "port": col.jsonl_port},
            "run.max_readings": 5})
        board.wait_for("halted", timeout=60, reason="done")
        assert [e["seq"] for e in board.of("acked")] == [1, 2, 3, 4, 5]
        assert json.loads(board.of("status")[0]["payload"])["status"] == "online"
        d = device_report(db, "board-jsonl")
        assert (d["stored"], d["gaps"], d["duplicates"]) == (5, [], 0)
        assert '"status":"online"' in d["last_status"]
    finally:
        col.stop()


def test_status_is_online_with_counters_then_the_last_will_says_offline(tmp_path, pki, launch,
                                                                        broker):
    import os
    import signal
    db = tmp_path / "r.db"
    col = CollectorProcess(db, pki, broker.port, client_id="collector-status").start()
    try:
        board = launch("board-status", broker.port)
        board.wait_for("acked", timeout=30, seq=2)
        online = wait_until(lambda: (device_report(db, "board-status") or {}).get("last_status"),
                            10, "online status")
        status = json.loads(online)
        assert status["status"] == "online" and status["boot"] == 1
        # The firmware may add fields (reset_cause, crash); these are the ones kept here.
        assert {"status", "version", "boot", "depth", "dropped", "torn"} <= set(status)
        os.killpg(board.proc.pid, signal.SIGKILL)   # an unclean loss: no DISCONNECT
        wait_until(lambda: (device_report(db, "board-status") or {}).get("last_status")
                   == '{"status":"offline"}', 10, "the last will")
    finally:
        col.stop()


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(alphabet=" \t\n\r{}[]\":,.-+0123456789eEtrufalsn\\x"),
                 st.recursive(st.none() | st.booleans() | st.floats() | st.integers()
                              | st.text(max_size=5),
                              lambda inner: st.lists(inner, max_size=3)
                              | st.dictionaries(st.text(max_size=3), inner, max_size=3),
                              max_leaves=8).map(json.dumps)),
       st.sampled_from(["", " ", "\n\t", "  \r\n"]), st.sampled_from(["", " ", "\n", " x"]))
def test_the_fast_json_decoder_agrees_with_json_loads_on_values_and_errors(text, before, after):
    from tools.collector_store import _json
    payload = (before + text + after).encode()
    try:
        expected = ("value", json.loads(payload))
    except ValueError as exc:
        expected = ("error", str(exc))
    try:
        got = ("value", _json(payload))
    except ValueError as exc:
        got = ("error", str(exc))
    assert repr(got) == repr(expected)      # repr: NaN == NaN


def test_docstring_examples_of_the_collector_and_ingest_run():
    import doctest

    from tools import cli_args, collector_mqtt_codec, collector_store, connection_caps, ingest
    for module in (collector_store, ingest, cli_args, connection_caps, collector_mqtt_codec):
        failures, tried = doctest.testmod(module, verbose=False)
        assert failures == 0 and tried >= 2, (module.__name__, failures, tried)
