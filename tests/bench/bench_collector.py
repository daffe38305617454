"""The collector's sustained ingest rate into SQLite (WAL) and PostgreSQL.

Two measurements per database:
- store only: readings validated and inserted one transaction each (as the collector commits
  before it acknowledges), from one thread;
- end to end: a paho-mqtt publisher sends QoS 1 readings to a real Mosquitto over TLS, the
  collector process (persistent session, manual PUBACK after commit) stores them; the rate
  is readings / time until the last one is in the database.

PostgreSQL is a throwaway server started with initdb/pg_ctl (fsync off, as in the tests), so
its numbers are an upper bound for a tuned server on the same machine.

    .venv/bin/python tests/bench/bench_collector.py
"""

import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))

import paho.mqtt.client as mqtt  # noqa: E402

from collector_fixtures import CollectorProcess, Postgres  # noqa: E402
from conftest import SUBSCRIBER, Pki  # noqa: E402
from host_sim.servers.mosquitto import Broker  # noqa: E402
from tools import collector  # noqa: E402

STORE_N = 5000
E2E_N = 5000


def payload(device, seq):
    return json.dumps({"id": device, "seq": seq, "timestamp": 1795600000, "status": 0,
                       "voltage": 230.0, "freq": 50.0}).encode()


def wipe(store):
    with store.lock:
        cur = store.db.cursor()
        for table in ("readings", "devices", "rejects"):
            cur.execute("DELETE FROM %s" % table)
        store.db.commit()


def store_rate(url):
    store = collector.Store(url)
    wipe(store)
    t0 = time.perf_counter()
    for seq in range(1, STORE_N + 1):
        collector.handle_message(store, "bench", "devices/bench-1/readings",
                                 payload("bench-1", seq))
    elapsed = time.perf_counter() - t0
    dup_t0 = time.perf_counter()
    for seq in range(1, 1001):
        collector.handle_message(store, "bench", "devices/bench-1/readings",
                                 payload("bench-1", seq))
    dup_elapsed = time.perf_counter() - dup_t0
    store.close()
    return STORE_N / elapsed, 1000 / dup_elapsed


def e2e_rate(url, pki, broker, name):
    if url.startswith("postgresql"):
        s = collector.Store(url)
        wipe(s)
        s.close()
    col = CollectorProcess(url, pki, broker.port, client_id="bench-" + name).start()
    dev = pki.device("bench-e2e")
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-e2e",
                      protocol=mqtt.MQTTv311)
    pub.tls_set(ca_certs=str(pki.ca.cert_pem), certfile=str(dev.cert_pem),
                keyfile=str(dev.key_pem))
    pub.max_inflight_messages_set(100)
    pub.max_queued_messages_set(0)
    pub.connect("localhost", broker.port)
    pub.loop_start()
    t0 = time.perf_counter()
    infos = [pub.publish("devices/bench-e2e/readings", payload("bench-e2e", seq), qos=1)
             for seq in range(1, E2E_N + 1)]
    for info in infos:
        info.wait_for_publish(60)
    store = collector.Store(url)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if len(store.seqs("bench-e2e")) >= E2E_N:
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - t0
        stored = len(store.seqs("bench-e2e"))
    finally:
        store.close()
        pub.loop_stop()
        pub.disconnect()
        col.stop()
    return stored, E2E_N / elapsed


def main():
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pki = Pki(tmp)
        pg = Postgres().start()
        try:
            broker = Broker(pki.ca.cert_pem, pki.server.chain_pem, pki.server.key_pem,
                            # as for the collector in production: no queue limit
                            subscribers=[SUBSCRIBER], persistence=True)
            with broker:
                for name, url in (("SQLite (WAL)", str(tmp / "bench.db")),
                                  ("PostgreSQL 15", pg.url)):
                    rate, dup_rate = store_rate(url)
                    e2e_url = str(tmp / "e2e.db") if url.endswith(".db") else url
                    stored, e2e = e2e_rate(e2e_url, pki, broker, name.split()[0].lower())
                    rows.append((name, rate, dup_rate, e2e, stored))
        finally:
            pg.stop()
    lines = ["# Collector: sustained ingest rate", "",
             "Store only: %d readings, one commit each, one thread. End to end: %d QoS 1 "
             "readings over TLS through Mosquitto into the collector process (PUBACK after "
             "commit)." % (STORE_N, E2E_N), "",
             "| database | store readings/s | duplicates absorbed/s | end-to-end readings/s | "
             "end-to-end stored |", "|---|---|---|---|---|"]
    for name, rate, dup_rate, e2e, stored in rows:
        lines.append("| %s | %.0f | %.0f | %.0f | %d/%d |" % (name, rate, dup_rate, e2e, stored,
                                                            E2E_N))
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "collector.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
