"""Two collector processes share one stream ($share/<group>/devices/+/...) into one PostgreSQL:
the broker hands each reading to one of them, every reading is stored exactly once, and a
collector killed mid-stream loses nothing (its unacknowledged readings come back to it when
its supervisor restarts it, under its certificate's persistent session)."""

import json
import os
import signal
import threading

import psycopg
import pytest

from collector_fixtures import (CollectorProcess, device_publisher, device_report,  # noqa: F401
                                postgres, publish_readings, reading_payload,
                                wait_until)
from conftest import SUBSCRIBER
from host_sim.servers.mosquitto import Broker
from tools.collector_store import Store

GROUP = "ingest"
MEMBERS = ("collector-a", "collector-b")   # one certificate (identity, session) each


@pytest.fixture(scope="module")
def shared_broker(pki):
    # Both identities may read every device's readings; persistence as for a collector.
    with Broker(pki.ca.cert_pem, pki.server.chain_pem, pki.server.key_pem,
                subscribers=[SUBSCRIBER] + list(MEMBERS), persistence=True,
                max_inflight=500) as running:
        yield running


def member(name, pki, broker, url):
    cert = pki.device(name)
    return CollectorProcess(url, pki, broker.port, client_id=name, extra=[
        "--cert", str(cert.cert_pem), "--key", str(cert.key_pem), "--share-group", GROUP])


def stopped_counts(col):
    """Stop a collector cleanly and return what it says it stored."""
    col.stop()
    for line in col.proc.stdout.read().splitlines():
        event = json.loads(line)
        if event["event"] == "mqtt_stopped":
            return event["counts"]
    raise AssertionError("no mqtt_stopped event: %s" % col.proc.stderr.read())


def stored_count(url, device):
    with psycopg.connect(url) as db:
        return db.execute("SELECT count(*) FROM readings WHERE device_id = %s",
                          (device,)).fetchone()[0]


def test_two_collectors_split_one_stream_and_a_killed_one_loses_nothing(pki, shared_broker,
                                                                       postgres):
    device, total = "shared-1", 10000
    a, b = (member(name, pki, shared_broker, postgres.url).start() for name in MEMBERS)
    pub = device_publisher(pki, shared_broker.port, device)
    restarted = None
    try:
        publish_readings(pub, device, range(1, 1001))
        wait_until(lambda: stored_count(postgres.url, device) == 1000, 20, "the first 1000")
        # The rest goes on in the background; collector-a dies without a word mid-stream.
        rest = threading.Thread(target=publish_readings, args=(pub, device, range(1001, total + 1)))
        rest.start()
        wait_until(lambda: stored_count(postgres.url, device) >= 2000, 20, "the stream under way")
        os.killpg(a.proc.pid, signal.SIGKILL)
        a.proc.wait(10)
        assert stored_count(postgres.url, device) < total, "the kill came after the stream"
        rest.join(60)
        # Its supervisor brings it back: its session still holds what it never acknowledged.
        restarted = member(MEMBERS[0], pki, shared_broker, postgres.url).start()
        d = wait_until(lambda: (device_report(postgres.url, device) or {}).get("stored")
                       == total and device_report(postgres.url, device), 30,
                       "all %d readings after the kill" % total)
        assert d["gaps"] == [] and (d["first_seq"], d["last_seq"]) == (1, total)
        store = Store(postgres.url, create=False)
        try:
            assert store.seqs(device) == list(range(1, total + 1))   # each exactly once
        finally:
            store.close()
        counts_b, counts_a_again = stopped_counts(b), stopped_counts(restarted)
        by_b = counts_b.get("stored", 0)
        by_a_again = counts_a_again.get("stored", 0)
        by_a_first = total - by_b - by_a_again      # what the killed one committed
        assert by_b > 0 and by_a_first > 0, (by_a_first, by_a_again, by_b)
        # A share, not a copy: without $share each collector would be handed every reading.
        handed_b = counts_b["stored"] + counts_b["duplicate"]
        assert handed_b < 0.8 * total, counts_b
    finally:
        pub.loop_stop()
        pub.disconnect()
        for col in (a, b, restarted):
            if col is not None:
                col.stop()


@pytest.mark.parametrize("same_readings", [True, False],
                         ids=["a redelivery of the same readings", "new readings"])
def test_two_collectors_writing_overlapping_batches_never_deadlock(same_readings, postgres):
    """Two batches of the same two devices, their messages in opposite orders, written at
    once; every row takes 5 ms and every device row 300 ms, so both transactions surely
    hold locks while asking for more. Same readings: the second waits on the first's rows
    (a deadlock if either inserted out of order). New readings: both COPYs go in at once
    and meet at the devices (a deadlock if either locked them out of order)."""
    from tools.collector_store import handle_batch

    devices = ["overlap-a", "overlap-b"]
    Store(postgres.url).close()     # the schema
    with psycopg.connect(postgres.url, autocommit=True) as db:
        db.execute("DELETE FROM readings WHERE device_id LIKE 'overlap-%'")
        db.execute("DELETE FROM devices WHERE device_id LIKE 'overlap-%'")
    batches = []
    for first in (1, 1 if same_readings else 51):
        messages = [("devices/%s/readings" % d, reading_payload(d, s)) for d in devices
                    for s in range(first, first + 50)]
        batches.append(messages)
    batches[1] = batches[1][50:] + batches[1][:50]      # the devices the other way round
    stores = [Store(postgres.url) for _ in batches]
    results, errors = [None, None], []

    def write(i):
        try:
            results[i] = handle_batch(stores[i], "mqtt", batches[i])
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
    with psycopg.connect(postgres.url, autocommit=True) as db:
        for table, delay_s in (("readings", 0.005), ("devices", 0.3)):
            db.execute("CREATE OR REPLACE FUNCTION slow_%s() RETURNS trigger AS $$ BEGIN "
                       "PERFORM pg_sleep(%s); RETURN NEW; END $$ LANGUAGE plpgsql"
                       % (table, delay_s))
            db.execute("CREATE TRIGGER slow_%s BEFORE INSERT OR UPDATE ON %s FOR EACH ROW "
                       "EXECUTE FUNCTION slow_%s()" % (table, table, table))
    try:
        threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    finally:
        for s in stores:
            s.close()
        with psycopg.connect(postgres.url, autocommit=True) as db:
            for table in ("readings", "devices"):
                db.execute("DROP TRIGGER slow_%s ON %s" % (table, table))
    assert errors == [], errors
    stored = sorted(r["stored"] for r in results)
    assert stored == ([0, 100] if same_readings else [100, 100]), results
    for d in devices:
        assert stored_count(postgres.url, d) == (50 if same_readings else 100)
