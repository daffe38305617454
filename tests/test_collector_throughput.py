"""The collector commits MQTT readings in batches and acknowledges each only after its batch
is committed: a collector that dies before the commit loses nothing (the broker resends), one
that dies after the commit but before the PUBACKs stores nothing twice, and a message the
database refuses becomes a reject without taking its batch with it. Its reader goes on
reading while a batch commits, but stops while two batches wait (bounded memory), and a
lone reading is committed within the batch deadline."""

import os
import signal
import threading
import time

import psycopg
import pytest

from collector_fixtures import (CollectorProcess, device_publisher,  # noqa: F401
                                postgres, publish_readings, reading_payload, wait_until)
from conftest import SUBSCRIBER
from host_sim.servers.mosquitto import Broker
from tools import collector_store
from tools.collector_mqtt import _READ_BYTES, MqttIngest
from tools.collector_store import Store, handle_batch

IDENTITY = "collector-batch"      # its own certificate: its own persistent session


@pytest.fixture(scope="module")
def batch_broker(pki):
    with Broker(pki.ca.cert_pem, pki.server.chain_pem, pki.server.key_pem,
                subscribers=[SUBSCRIBER, IDENTITY], persistence=True,
                max_inflight=500) as running:
        yield running


def publish(pki, port, device, seqs):
    c = device_publisher(pki, port, device)
    try:
        publish_readings(c, device, seqs)
    finally:
        c.disconnect()
        c.loop_stop()


def ingest(pki, broker, store, **options):
    cert = pki.device(IDENTITY)
    return MqttIngest(store, "localhost", broker.port, pki.ca.cert_pem, cert.cert_pem,
                      cert.key_pem, client_id=IDENTITY, **options).start()


def process(pki, broker, url):
    cert = pki.device(IDENTITY)
    return CollectorProcess(url, pki, broker.port, client_id=IDENTITY, extra=[
        "--cert", str(cert.cert_pem), "--key", str(cert.key_pem)])


def seqs(url, device):
    store = Store(str(url), create=False)
    try:
        return store.seqs(device)
    finally:
        store.close()


def test_many_readings_are_committed_in_few_transactions(tmp_path, pki, batch_broker):
    store = Store(str(tmp_path / "r.db"))
    col = ingest(pki, batch_broker, store, batch_max=100, batch_wait_ms=50)
    try:
        publish(pki, batch_broker.port, "batch-few", range(1, 2001))
        wait_until(lambda: col.counts.get("stored") == 2000, 20, "2000 stored")
        assert store.seqs("batch-few") == list(range(1, 2001))
        assert col.batches <= 60, "%d transactions for 2000 readings" % col.batches
    finally:
        col.stop()
        store.close()


def test_a_batch_is_acknowledged_only_after_its_commit(pki, batch_broker, postgres):
    """Kill the collector while the database holds its batch's commit: the broker must
    resend all of it to the next collector (a PUBACK sent early would lose it)."""
    device = "batch-blocked"
    Store(postgres.url).close()
    col = process(pki, batch_broker, postgres.url).start()
    blocker = psycopg.connect(postgres.url, autocommit=False)
    try:
        blocker.execute("LOCK TABLE readings IN EXCLUSIVE MODE")   # inserts wait for it
        publish(pki, batch_broker.port, device, range(1, 101))
        # The collector has the readings and is stuck in its batch's INSERT.
        wait_until(lambda: blocker.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE 'COPY readings%'").fetchone()[0] > 0, 20,
            "the collector waiting on the lock")
        os.killpg(col.proc.pid, signal.SIGKILL)
        col.proc.wait(10)
        blocker.rollback()
        assert seqs(postgres.url, device) == []
        col = process(pki, batch_broker, postgres.url).start()
        wait_until(lambda: seqs(postgres.url, device) == list(range(1, 101)), 20,
                   "all 100 resent by the broker and stored")
    finally:
        blocker.close()
        col.stop()


class Held(Store):
    """A database that stops answering at its first batch until released."""

    def __init__(self, path):
        super().__init__(path)
        self.entered, self.release = threading.Event(), threading.Event()

    def add_batch(self, source, routed):
        self.entered.set()
        self.release.wait(30)
        return super().add_batch(source, routed)


def test_the_reader_stops_reading_while_two_batches_wait_for_the_database(tmp_path, pki):
    """With no broker window at all (max_inflight_messages 0: unlimited), a hung database
    holds the consumer at two batches of messages and one read of bytes; the rest waits
    in the kernel and the broker, and all of it arrives once the database answers."""
    device, total = "batch-backpressure", 8000      # ~1.1 MB of PUBLISH packets
    store = Held(str(tmp_path / "r.db"))
    with Broker(pki.ca.cert_pem, pki.server.chain_pem, pki.server.key_pem,
                subscribers=[IDENTITY], persistence=True, max_inflight=0) as unlimited:
        col = ingest(pki, unlimited, store, batch_max=20)
        try:
            publish(pki, unlimited.port, device, range(1, total + 1))
            wait_until(store.entered.is_set, 20, "the first batch at the database")
            wait_until(lambda: col.held_max >= 40, 20, "two batches of 20 waiting")
            time.sleep(1.0)     # time to read on, were it not held back
            assert col.held_max == 40, "%d messages held" % col.held_max
            assert col.bytes_in < 2 * _READ_BYTES, "%d bytes read while the database hung" \
                % col.bytes_in
            store.release.set()
            wait_until(lambda: store.seqs(device) == list(range(1, total + 1)), 60,
                       "all %d once the database answers" % total)
            assert col.held_max == 40 and col.counts["stored"] == total
            assert col.bytes_in > total * 100
        finally:
            store.release.set()
            col.stop()
            store.close()


def test_a_lone_reading_is_committed_at_the_batch_deadline(tmp_path, pki, batch_broker):
    device = "batch-lone"
    store = Store(str(tmp_path / "r.db"))
    col = ingest(pki, batch_broker, store, batch_max=500, batch_wait_ms=300)
    try:
        t0 = time.monotonic()
        publish(pki, batch_broker.port, device, [1])
        wait_until(lambda: store.seqs(device) == [1], 10, "the lone reading")
        waited_s = time.monotonic() - t0
        # It waited for company (the deadline), then went in alone: 1 of up to 500.
        assert 0.3 <= waited_s < 5, waited_s
        assert col.batches == 1
    finally:
        col.stop()
        store.close()


def test_a_database_dying_mid_stream_loses_nothing_and_only_the_unacknowledged_come_back(
        pki, batch_broker, postgres):
    """PostgreSQL stops while batches are read ahead of the commit: what was read but not
    committed was never acknowledged, so the broker hands it to the next consumer, and what
    was committed comes back at most once more (its PUBACKs were due after the commit)."""
    device, total, batch = "batch-pg-dies", 3000, 100
    Store(postgres.url).close()
    store = Store(postgres.url)
    col = ingest(pki, batch_broker, store, batch_max=batch)
    sender = threading.Thread(target=publish, args=(pki, batch_broker.port, device,
                                                    range(1, total + 1)))
    sender.start()
    try:
        wait_until(lambda: col.counts.get("stored", 0) >= 300, 20, "the stream under way")
        postgres.pause()
        wait_until(col.failed.is_set, 20, "the consumer stopping on the dead database")
        assert col.failure.startswith("MQTT consumer stopped: StoreError"), col.failure
        col.stop()
        store.close()
        sender.join(60)
    finally:
        postgres.resume()
    committed = len(seqs(postgres.url, device))
    assert 300 <= committed < total, committed
    store = Store(postgres.url)
    col = ingest(pki, batch_broker, store)
    try:
        wait_until(lambda: store.seqs(device) == list(range(1, total + 1)), 30,
                   "all %d after the database came back" % total)
        # Resent: everything not acknowledged. Of that, already stored: at most the
        # batches committed while their PUBACKs were still to go out.
        assert col.counts["stored"] == total - committed
        assert col.counts.get("duplicate", 0) <= 2 * batch, col.counts
    finally:
        col.stop()
        store.close()


class DiesAfterCommit(Store):
    """Commits its first batch, then fails before the consumer can send the PUBACKs."""

    committed = None

    def add_batch(self, source, routed):
        counts = super().add_batch(source, routed)
        if self.committed is None:
            self.committed = counts["stored"]
            raise KeyboardInterrupt("killed between the commit and the acknowledgements")
        return counts


def test_a_collector_dying_between_commit_and_pubacks_stores_nothing_twice(tmp_path, pki,
                                                                          batch_broker):
    device, total = "batch-dies", 1000
    store = DiesAfterCommit(str(tmp_path / "r.db"))
    col = ingest(pki, batch_broker, store, batch_max=200, batch_wait_ms=50)
    publish(pki, batch_broker.port, device, range(1, total + 1))
    wait_until(col.failed.is_set, 20, "the first batch committed, then the death")
    col.stop()
    store.close()
    first = store.committed
    assert 0 < first <= 200 and len(seqs(tmp_path / "r.db", device)) == first
    # The next collector gets the unacknowledged batch again: absorbed, counted, not stored.
    store = Store(str(tmp_path / "r.db"))
    col = ingest(pki, batch_broker, store)
    try:
        wait_until(lambda: len(store.seqs(device)) == total, 20, "all %d readings" % total)
        assert store.seqs(device) == list(range(1, total + 1))
        assert col.counts.get("duplicate", 0) >= first
        assert store.report()["devices"][0]["duplicates"] >= first
    finally:
        col.stop()
        store.close()


def test_exactly_once_when_the_collector_process_is_killed_mid_stream(tmp_path, pki,
                                                                     batch_broker):
    device, total, db = "batch-killed", 10000, tmp_path / "r.db"
    col = process(pki, batch_broker, db).start()
    sender = threading.Thread(target=publish, args=(pki, batch_broker.port, device,
                                                    range(1, total + 1)))
    sender.start()
    try:
        wait_until(lambda: os.path.exists(db) and len(seqs(db, device)) >= 300, 20,
                   "the stream under way")
        os.killpg(col.proc.pid, signal.SIGKILL)
        col.proc.wait(10)
        at_kill = len(seqs(db, device))
        sender.join(60)
        assert at_kill < total, "the kill came after the stream had ended"
        col = process(pki, batch_broker, db).start()
        wait_until(lambda: len(seqs(db, device)) == total, 30, "all %d readings" % total)
        assert seqs(db, device) == list(range(1, total + 1))
    finally:
        sender.join(60)
        col.stop()


def test_postgresql_batches_go_in_by_copy_and_a_batch_holding_a_stored_reading_by_insert(
        postgres):
    store = Store(postgres.url)
    try:
        with store.lock:
            store.db.execute("DELETE FROM readings WHERE device_id = 'copy-1'")
            store.db.execute("DELETE FROM devices WHERE device_id = 'copy-1'")
            store.db.commit()

        def batch(*seqs):
            return handle_batch(store, "mqtt", [("devices/copy-1/readings",
                                                 reading_payload("copy-1", s)) for s in seqs])
        assert batch(1, 2, 3) == {"stored": 3, "duplicate": 0, "status": 0, "rejected": 0}
        assert store.copy_retries == 0
        # A redelivery beside new readings: COPY meets the unique key, the INSERT skips it.
        assert batch(3, 4) == {"stored": 1, "duplicate": 1, "status": 0, "rejected": 0}
        assert store.copy_retries == 1
        # The same reading twice in one batch (resent within one connection).
        assert batch(5, 6, 5) == {"stored": 2, "duplicate": 1, "status": 0, "rejected": 0}
        assert store.copy_retries == 2
        assert batch(7) == {"stored": 1, "duplicate": 0, "status": 0, "rejected": 0}
        assert store.copy_retries == 2
        assert store.seqs("copy-1") == list(range(1, 8))
        d = [d for d in store.report()["devices"] if d["device_id"] == "copy-1"][0]
        assert d["duplicates"] == 2 and d["last_seen"] is not None
    finally:
        store.close()


@pytest.mark.parametrize("db_kind, field, value", [
    ("sqlite", "voltage", 2 ** 70),         # SQLite holds no integer beyond 64 bits
    ("postgresql", "status", 2 ** 40),      # the status column is a 32-bit integer
])
def test_a_value_the_database_refuses_is_rejected_alone_and_its_batch_is_stored(
        db_kind, field, value, tmp_path, monkeypatch, request):
    if db_kind == "sqlite":
        store = Store(str(tmp_path / "r.db"))
    else:
        store = Store(request.getfixturevalue("postgres").url)
        with store.lock:
            store.db.execute("DELETE FROM readings WHERE device_id = 'b1'")
            store.db.execute("DELETE FROM rejects")
            store.db.commit()
    real = collector_store.validate

    def validate(device, payload):
        r = real(device, payload)
        if r["seq"] == 3:
            r[field] = value          # past validation, as an unforeseen gap would be
        return r
    monkeypatch.setattr(collector_store, "validate", validate)
    counts = handle_batch(store, "mqtt", [("devices/b1/readings", reading_payload("b1", s))
                                          for s in range(1, 6)])
    assert counts == {"stored": 4, "duplicate": 0, "status": 0, "rejected": 1}
    assert store.seqs("b1") == [1, 2, 4, 5]
    assert "the database refused it" in store.rejects()[0][3]
    store.close()


def test_a_publish_of_1_5_mb_is_skipped_as_it_streams_kept_as_a_reject_and_acknowledged(
        tmp_path, pki, batch_broker):
    device = "batch-huge"
    store = Store(str(tmp_path / "r.db"))
    col = ingest(pki, batch_broker, store)
    try:
        c = device_publisher(pki, batch_broker.port, device)
        topic = "devices/%s/readings" % device
        c.publish(topic, reading_payload(device, 1), qos=1).wait_for_publish(10)
        c.publish(topic, b"[" * 1500000, qos=1).wait_for_publish(30)
        c.publish(topic, reading_payload(device, 2), qos=1).wait_for_publish(10)
        c.disconnect()
        c.loop_stop()
        wait_until(lambda: store.seqs(device) == [1, 2], 20, "the readings around it")
        assert [r[3] for r in store.rejects() if r[1] == device] == [
            "PUBLISH of %d bytes exceeds 1048576 (payloads are at most 4096)"
            % (2 + len(topic) + 2 + 1500000)]      # topic length, topic, packet id, payload
    finally:
        col.stop()
        store.close()
    # Acknowledged: the next consumer on the session is not handed it again.
    store = Store(str(tmp_path / "r.db"))
    col = ingest(pki, batch_broker, store)
    try:
        publish(pki, batch_broker.port, device, [3])
        wait_until(lambda: store.seqs(device) == [1, 2, 3], 20, "reading 3")
        assert len([r for r in store.rejects() if r[1] == device]) == 1
    finally:
        col.stop()
        store.close()


def test_a_frozen_broker_is_noticed_within_the_keepalive_and_the_consumer_comes_back(
        tmp_path, pki, batch_broker):
    import time

    store = Store(str(tmp_path / "r.db"))
    col = ingest(pki, batch_broker, store, keepalive_s=1)
    try:
        os.kill(batch_broker.proc.pid, signal.SIGSTOP)     # a dark link: no FIN, no RST
        try:
            t0 = time.monotonic()
            wait_until(lambda: not col.ready.is_set(), 5, "the dead link noticed")
            noticed_s = time.monotonic() - t0
        finally:
            os.kill(batch_broker.proc.pid, signal.SIGCONT)
        assert noticed_s < 2.5, noticed_s    # PINGREQ after 0.5 s idle, PINGRESP due in 1 s
        wait_until(col.ready.is_set, 15, "subscribed again")
        publish(pki, batch_broker.port, "batch-frozen", [1])
        wait_until(lambda: store.seqs("batch-frozen") == [1], 10, "a reading after it")
    finally:
        col.stop()
        store.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_the_consumer_resumes_its_session_after_the_broker_restarts(sig, tmp_path, pki,
                                                                   batch_broker):
    # SIGTERM: Mosquitto ends each TLS session with close_notify; SIGKILL: the kernel resets.
    device = "batch-restart-%d" % sig
    store = Store(str(tmp_path / "r.db"))
    col = ingest(pki, batch_broker, store)
    try:
        publish(pki, batch_broker.port, device, [1])
        wait_until(lambda: store.seqs(device) == [1], 10, "reading 1")
        batch_broker.stop(sig)
        wait_until(lambda: not col.ready.is_set(), 5, "the lost connection noticed")
        batch_broker.start()
        publish(pki, batch_broker.port, device, [2])
        wait_until(lambda: store.seqs(device) == [1, 2], 15, "reading 2 after the restart")
        assert not col.failed.is_set()
    finally:
        col.stop()
        store.close()


def test_a_collector_told_to_stop_while_the_database_hangs_exits_and_loses_nothing(
        pki, batch_broker, postgres):
    """SIGTERM while the writer waits inside PostgreSQL (a lock held elsewhere): the collector
    does not wait for ever to close the store; it exits 1 with one line, and the readings it
    had not committed (never acknowledged) reach the next collector."""
    device = "batch-pg-hung"
    Store(postgres.url).close()
    col = CollectorProcess(postgres.url, pki, batch_broker.port).start()
    locker = psycopg.connect(postgres.url)
    try:
        locker.execute("LOCK TABLE readings IN ACCESS EXCLUSIVE MODE")  # held until rollback
        publish(pki, batch_broker.port, device, [1, 2, 3])
        with psycopg.connect(postgres.url, autocommit=True) as watch:
            wait_until(lambda: watch.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            ).fetchone()[0] >= 1, 20, "the collector's writer waiting on the lock")
        col.proc.send_signal(signal.SIGTERM)
        col.proc.wait(timeout=40)
        err = col.proc.stderr.read().strip().splitlines()
        assert col.proc.returncode == 1, err
        assert err == ["collector: stopped while the postgresql database was not answering; "
                       "readings not yet committed stay with the broker"]
    finally:
        locker.rollback()
        locker.close()
        if col.proc.poll() is None:
            col.stop(signal.SIGKILL)
    assert seqs(postgres.url, device) == []
    col = CollectorProcess(postgres.url, pki, batch_broker.port).start()
    try:
        wait_until(lambda: seqs(postgres.url, device) == [1, 2, 3], 30,
                   "the three readings through the next collector")
    finally:
        col.stop()
