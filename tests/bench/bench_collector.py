"""The collector's sustained ingest rate against Mosquitto's own delivery rate, same TLS listener.

One broker (TLS, client certificates, persistence, max_inflight_messages 1000). Each run
starts a consumer, then PUBLISHERS `mosquitto_pub -l -q 1` processes (C, one device
certificate each) send N QoS 1 readings between them, and the rate is N / (time from the
first publisher's start until the consumer has the last one):
- `mosquitto_sub -q 1 -C N` (C, PUBACK per message, prints and forgets): Mosquitto's own
  delivery rate, the reference;
- bare paho-mqtt, manual_ack, acknowledging each message at once and storing nothing: the
  ceiling of a paho-based consumer in one Python process;
- the collector process (tools/collector.py serve: batches of up to 500, one transaction,
  then a PUBACK each) into SQLite (WAL) and PostgreSQL 15;
- two collector processes sharing `$share/bench/devices/+/readings` into PostgreSQL.
The publishers alone (into a broker whose consumer is mosquitto_sub) are measured too: they
must be faster than every consumer, or they, not the consumer, are what is measured.
Runs alternate and repeat (this machine is shared); the table gives the median and range.
Store only: the same readings into the store from one thread, one transaction each (as
before batching) and in batches of 500.

PostgreSQL is a throwaway server (fsync off, as in the tests): an upper bound for a tuned
server on the same machine. Each table gives the 1-minute load average seen during its runs.

    .venv/bin/python tests/bench/bench_collector.py      # writes results/collector.md + .png
    .venv/bin/python tests/bench/bench_collector.py --only postgres --runs 3  # prints only
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))

import paho.mqtt.client as mqtt  # noqa: E402

from collector_fixtures import CollectorProcess, Postgres  # noqa: E402
from conftest import SUBSCRIBER, Pki  # noqa: E402
from host_sim.servers.mosquitto import Broker  # noqa: E402
from tools.collector_store import Store, handle_batch, handle_message  # noqa: E402

N = 30000            # readings per run
PUBLISHERS = 3       # mosquitto_pub processes, one device each
RUNS = int(os.environ.get("BENCH_RUNS", 5))
# Which consumers each subset runs; mosquitto_sub (live and backlog) is always the reference.
SUBSETS = {
    "all": ("sub", "paho", "sqlite", "pg", "shared", "drain-sub", "drain-sqlite", "drain-pg"),
    "postgres": ("sub", "pg", "shared", "drain-sub", "drain-pg"),
    "sqlite": ("sub", "sqlite", "drain-sub", "drain-sqlite"),
}
STORE_N = 5000
RESULTS = HERE / "results"
SINGLE = "bench-collector"
SHARED = ("bench-collector-a", "bench-collector-b")


def payload(device, seq):
    return json.dumps({"id": device, "seq": seq, "timestamp": 1795600000, "status": 0,
                       "voltage": 230.0, "freq": 50.0}, separators=(",", ":")).encode()


class Stream:
    """N readings split over PUBLISHERS mosquitto_pub processes, fed from memory."""

    def __init__(self, pki, port, run):
        self.pki, self.port = pki, port
        self.devices = ["bench-%d-%d" % (run, p) for p in range(PUBLISHERS)]
        share = self.last_seq = N // PUBLISHERS
        self.lines = {d: b"".join(payload(d, s) + b"\n" for s in range(1, share + 1))
                      for d in self.devices}
        self.total = share * PUBLISHERS
        self.procs = []

    def start(self):
        for device in self.devices:
            dev = self.pki.device(device)
            proc = subprocess.Popen(
                ["mosquitto_pub", "-h", "localhost", "-p", str(self.port), "--cafile",
                 str(self.pki.ca.cert_pem), "--cert", str(dev.cert_pem), "--key",
                 str(dev.key_pem), "-i", device, "-t", "devices/%s/readings" % device,
                 "-q", "1", "-M", "1000", "-l"], stdin=subprocess.PIPE)
            threading.Thread(target=self._feed, args=(proc, self.lines[device]),
                             daemon=True).start()
            self.procs.append(proc)
        return time.perf_counter()

    @staticmethod
    def _feed(proc, data):
        proc.stdin.write(data)
        proc.stdin.close()

    def wait(self):
        for proc in self.procs:
            if proc.wait(120):
                raise RuntimeError("mosquitto_pub exited with %s" % proc.returncode)
        return time.perf_counter()


def run_mosquitto_sub(pki, broker, run):
    stream = Stream(pki, broker.port, run)
    sub = subprocess.Popen(
        ["mosquitto_sub", "-h", "localhost", "-p", str(broker.port), "--cafile",
         str(pki.ca.cert_pem), "--cert", str(pki.subscriber.cert_pem), "--key",
         str(pki.subscriber.key_pem), "-t", "devices/+/readings", "-q", "1", "-C",
         str(stream.total)], stdout=subprocess.PIPE)
    time.sleep(1.0)   # connected and subscribed (it prints nothing until a message)
    t0 = stream.start()
    received = sub.stdout.read().count(b"\n")
    t_sub = time.perf_counter() if sub.wait(120) == 0 else None
    t_pub = stream.wait()
    assert received == stream.total and t_sub, (received, stream.total)
    return stream.total / (t_sub - t0), stream.total / (t_pub - t0)


def sub_argv(pki, broker, *more):
    return ["mosquitto_sub", "-h", "localhost", "-p", str(broker.port), "--cafile",
            str(pki.ca.cert_pem), "--cert", str(pki.subscriber.cert_pem), "--key",
            str(pki.subscriber.key_pem), "-t", "devices/+/readings", "-q", "1"] + list(more)


def drain_mosquitto_sub(pki, broker, run):
    """A backlog of N queued in a persistent session, then mosquitto_sub takes it all:
    Mosquitto's delivery rate with no publisher running at all."""
    subprocess.run(sub_argv(pki, broker, "-c", "-i", "drain", "-E"), check=True, timeout=30)
    stream = Stream(pki, broker.port, run)
    stream.start()
    stream.wait()
    sub = subprocess.Popen(sub_argv(pki, broker, "-c", "-i", "drain", "-C", str(stream.total)),
                           stdout=subprocess.PIPE)
    sub.stdout.readline()
    t_first = time.perf_counter()
    rest = sub.stdout.read().count(b"\n")
    t_last = time.perf_counter()
    sub.wait(60)
    end_session(pki, broker, SUBSCRIBER)
    assert rest == stream.total - 1, rest
    return rest / (t_last - t_first)


def drain_collector(pki, broker, url, run):
    """The same backlog, taken by the collector process (rate from its first stored
    reading to its last, so Python's start-up is not counted)."""
    wipe(url)
    collector(pki, broker, url, SINGLE).start().stop()     # the session, subscribed
    stream = Stream(pki, broker.port, run)
    stream.start()
    stream.wait()
    col = collector(pki, broker, url, SINGLE)
    col.start()
    watch = Watch(url, stream)
    try:
        deadline = time.monotonic() + 180
        while not watch.started() and time.monotonic() < deadline:
            time.sleep(0.001)
        t_first = time.perf_counter()
        first = watch.count()
        while not watch.done() and time.monotonic() < deadline:
            time.sleep(0.005)
        t_last = time.perf_counter()
        last = watch.count()
        assert last == stream.total, (last, stream.total)
        return (last - first) / (t_last - t_first)
    finally:
        watch.close()
        col.stop()
        end_session(pki, broker, SINGLE)


def run_bare_paho(pki, broker, run):
    stream = Stream(pki, broker.port, run)
    got, done, ready = [0], threading.Event(), threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=SUBSCRIBER,
                    protocol=mqtt.MQTTv311, manual_ack=True)
    c.tls_set(ca_certs=str(pki.ca.cert_pem), certfile=str(pki.subscriber.cert_pem),
              keyfile=str(pki.subscriber.key_pem))
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("devices/+/readings", 1)
    c.on_subscribe = lambda *a: ready.set()

    def on_message(cl, userdata, msg):
        cl.ack(msg.mid, msg.qos)
        got[0] += 1
        if got[0] == stream.total:
            done.set()
    c.on_message = on_message
    c.connect("localhost", broker.port)
    c.loop_start()
    try:
        ready.wait(10)
        t0 = stream.start()
        done.wait(120)
        t_end = time.perf_counter()
        stream.wait()
        assert got[0] == stream.total, got[0]
        return stream.total / (t_end - t0)
    finally:
        c.disconnect()
        c.loop_stop()


class Watch:
    """How far the consumer has got, over one connection and cheaply: whether each
    device's last reading is stored (an index lookup), the full count only then. (A fresh
    connection and a count(*) every poll, as before, cost PostgreSQL a backend and the
    collector a share of the two cores; mosquitto_sub's runs pay nothing of the kind.)"""

    def __init__(self, url, stream):
        if url.startswith("postgresql://"):
            import psycopg
            self.db, mark = psycopg.connect(url, autocommit=True), "%s"
        else:
            import sqlite3
            self.db, mark = sqlite3.connect(url, isolation_level=None), "?"
        self.total, n = stream.total, len(stream.devices)
        among = "device_id IN (%s)" % ",".join([mark] * n)
        self.devices = list(stream.devices)
        self.lasts = [x for d in stream.devices for x in (d, stream.last_seq)]
        self.n = n
        self.q_last = "SELECT count(*) FROM readings WHERE " + " OR ".join(
            ["(device_id = %s AND seq = %s)" % (mark, mark)] * n)
        self.q_any = "SELECT count(*) FROM (SELECT 1 FROM readings WHERE %s LIMIT 1) AS a" \
            % among
        self.q_count = "SELECT count(*) FROM readings WHERE " + among

    def _one(self, query, args):
        return self.db.execute(query, args).fetchone()[0]

    def started(self):
        return self._one(self.q_any, self.devices) > 0

    def count(self):
        return self._one(self.q_count, self.devices)

    def done(self):
        # Each device's last reading first: with two collectors it may land before others.
        return self._one(self.q_last, self.lasts) == self.n and self.count() == self.total

    def close(self):
        self.db.close()


def wipe(url):
    store = Store(url)
    with store.lock:
        cur = store.db.cursor()
        for table in ("readings", "devices", "rejects"):
            cur.execute("DELETE FROM %s" % table)
        store.db.commit()
    store.close()


def collector(pki, broker, url, identity, group=None):
    cert = pki.device(identity)
    extra = ["--cert", str(cert.cert_pem), "--key", str(cert.key_pem)]
    if group:
        extra += ["--share-group", group]
    return CollectorProcess(url, pki, broker.port, client_id=identity, extra=extra)


def end_session(pki, broker, identity):
    """Connect once with a clean session: the collector's persistent session (and its
    subscription) must not queue the next runs' readings."""
    cert = pki.device(identity)
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=identity,
                    protocol=mqtt.MQTTv311, clean_session=True)
    c.tls_set(ca_certs=str(pki.ca.cert_pem), certfile=str(cert.cert_pem),
              keyfile=str(cert.key_pem))
    c.connect("localhost", broker.port)
    c.loop_start()
    time.sleep(0.3)
    c.disconnect()
    c.loop_stop()


def run_collector(pki, broker, url, run, shared=False):
    wipe(url)
    stream = Stream(pki, broker.port, run)
    identities = SHARED if shared else (SINGLE,)
    cols = [collector(pki, broker, url, name, "bench" if shared else None).start()
            for name in identities]
    watch = Watch(url, stream)
    try:
        t0 = stream.start()
        deadline = time.monotonic() + 180
        while not watch.done() and time.monotonic() < deadline:
            time.sleep(0.005)
        t_end = time.perf_counter()
        stored = watch.count()
        stream.wait()
        batches = []
        for col in cols:
            col.stop()
            for line in col.proc.stdout.read().splitlines():
                event = json.loads(line)
                if event["event"] == "mqtt_stopped":
                    batches.append((event["counts"].get("stored", 0), event["batches"]))
        assert stored == stream.total, (stored, stream.total)
        return stream.total / (t_end - t0), batches
    finally:
        watch.close()
        for col in cols:
            col.stop()
        for name in identities:
            end_session(pki, broker, name)


def store_rates(url):
    wipe(url)
    store = Store(url)
    messages = [("devices/store-1/readings", payload("store-1", s))
                for s in range(1, STORE_N + 1)]
    t0 = time.perf_counter()
    for topic, body in messages:
        handle_message(store, "bench", topic, body)
    one = STORE_N / (time.perf_counter() - t0)
    messages = [(t.replace("store-1", "store-2"), b.replace(b"store-1", b"store-2"))
                for t, b in messages]
    t0 = time.perf_counter()
    for at in range(0, STORE_N, 500):
        handle_batch(store, "bench", messages[at:at + 500])
    batched = STORE_N / (time.perf_counter() - t0)
    store.close()
    return one, batched


def ratio(values, reference):
    """Each run against the mosquitto_sub run beside it (the load on this shared machine
    drifts): median (min-max) of those ratios."""
    each = [v / r for v, r in zip(values, reference)]
    return "%.2f (%.2f-%.2f)" % (statistics.median(each), min(each), max(each))


def spread(values, fmt="%.0f"):
    return ("%s (%s-%s)" % (fmt, fmt, fmt)) % (statistics.median(values), min(values),
                                                max(values))


def plot(path, groups):
    """groups: [(title, [(name, [rates])], reference)] -> one bar panel each."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(len(groups), 1, figsize=(8, 2 + 1.1 * sum(
        len(rows) for _, rows, _ in groups) / len(groups) * len(groups) / 1.6), dpi=100)
    for ax, (title, rows, reference) in zip(axes, groups):
        names = [name for name, _ in rows][::-1]
        ax.barh(names, [statistics.median(v) for _, v in rows][::-1], color="#4c72b0")
        for y, (_, values) in enumerate(rows[::-1]):
            ax.plot(values, [y] * len(values), "k|", markersize=12)
        ax.axvline(0.8 * reference, color="#c44e52", linestyle="--",
                   label="0.8 x mosquitto_sub (%.0f/s)" % (0.8 * reference))
        ax.set_title(title, fontsize=9)
        ax.legend(loc="lower right", fontsize=7)
    axes[-1].set_xlabel("QoS 1 readings/s over TLS (bars: median, ticks: each run)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=sorted(SUBSETS), default="all",
                   help="run only these consumers (with mosquitto_sub as the reference); "
                        "anything but 'all' prints the tables and leaves results/ alone")
    p.add_argument("--runs", type=int, default=RUNS, help="runs of each (default %d)" % RUNS)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    kinds = SUBSETS[args.only]
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        pki = Pki(tmp)
        pg = Postgres().start()
        sqlite_url = str(tmp / "bench.db")
        rates = {k: [] for k in SUBSETS["all"] + ("pub",)}
        loads = {"live": [], "backlog": []}
        batches = {"sqlite": [], "pg": [], "shared": []}
        store = {}
        try:
            broker = Broker(pki.ca.cert_pem, pki.server.chain_pem, pki.server.key_pem,
                            subscribers=[SUBSCRIBER, SINGLE] + list(SHARED),
                            persistence=True,
                            max_inflight=1000)
            with broker:
                if "sqlite" in kinds:
                    store["SQLite (WAL)"] = store_rates(str(tmp / "store.db"))
                if "pg" in kinds:
                    store["PostgreSQL 15"] = store_rates(pg.url)
                run = 0
                for _ in range(args.runs):
                    for kind in kinds:
                        run += 1
                        if kind == "drain-sub":
                            rates[kind].append(drain_mosquitto_sub(pki, broker, run))
                        elif kind.startswith("drain-"):
                            rates[kind].append(drain_collector(
                                pki, broker, sqlite_url if kind == "drain-sqlite" else pg.url,
                                run))
                        elif kind == "sub":
                            sub_rate, pub_rate = run_mosquitto_sub(pki, broker, run)
                            rates["sub"].append(sub_rate)
                            rates["pub"].append(pub_rate)
                        elif kind == "paho":
                            rates["paho"].append(run_bare_paho(pki, broker, run))
                        else:
                            rate, made = run_collector(pki, broker, sqlite_url if kind ==
                                                       "sqlite" else pg.url, run,
                                                       shared=kind == "shared")
                            rates[kind].append(rate)
                            batches[kind].append(made)
                        loads["backlog" if kind.startswith("drain-") else "live"].append(
                            os.getloadavg()[0])
                        print(kind, "%.0f/s" % rates[kind][-1], "load %.1f" % os.getloadavg()[0],
                              flush=True)
        finally:
            pg.stop()
    names = {"sub": "mosquitto_sub (C)", "paho": "bare paho, no storage",
             "sqlite": "collector, SQLite", "pg": "collector, PostgreSQL",
             "shared": "2 collectors ($share), PostgreSQL"}
    rows = [(names[k], rates[k]) for k in ("sub", "paho", "sqlite", "pg", "shared") if k in kinds]

    def per_batch(kind):
        made = [m for run in batches[kind] for m in run]
        return sum(s for s, _ in made) / max(1, sum(b for _, b in made))

    lines = [
        "# Collector: ingest rate against Mosquitto's own delivery rate", "",
        "%d QoS 1 readings per run from %d `mosquitto_pub -q 1 -M 1000` processes over the "
        "TLS listener (client certificates, persistence, max_inflight_messages 1000); rate = "
        "readings / (publishers' start -> consumer has the last). %d runs each, alternating; "
        "median (min-max); load average (1 min) %s. In the mosquitto_sub runs the publishers "
        "finish at %s readings/s, together with it: it keeps pace with them, so its figure "
        "here is a lower bound of Mosquitto's rate (the backlog table below has no publisher "
        "at all)." % (N, PUBLISHERS, args.runs, spread(loads["live"], "%.1f"),
                      spread(rates["pub"])), "",
        "| consumer | readings/s | x mosquitto_sub, run by run | readings per transaction |",
        "|---|---|---|---|"]
    extra = {names[k]: "%.0f" % per_batch(k) for k in ("sqlite", "pg", "shared") if k in kinds}
    for name, values in rows:
        lines.append("| %s | %s | %s | %s |" % (name, spread(values),
                                                 ratio(values, rates["sub"]),
                                                 extra.get(name, "-")))
    drain_ref = statistics.median(rates["drain-sub"])
    drains = [(names[k[6:]] if k != "drain-sub" else names["sub"], k)
              for k in ("drain-sub", "drain-sqlite", "drain-pg") if k in kinds]
    lines += ["", "A backlog of %d readings queued in a persistent session (no publisher "
              "running), then taken by the consumer; rate from its first reading to its "
              "last; load average %s:" % (N, spread(loads["backlog"], "%.1f")), "",
              "| consumer | readings/s | x mosquitto_sub, run by run |", "|---|---|---|"]
    for name, kind in drains:
        lines.append("| %s | %s | %s |" % (name, spread(rates[kind]),
                                           ratio(rates[kind], rates["drain-sub"])))
    if "shared" in kinds:
        shared = [m for run in batches["shared"] for m in run]
        lines += ["", "Two collectors sharing the subscription stored %s of the readings "
                  "each (per run: collector-a/collector-b)." % ", ".join(
                      "%d/%d" % (shared[i][0], shared[i + 1][0])
                      for i in range(0, len(shared), 2))]
    lines += ["", "Store only, %d readings, one thread:" % STORE_N, "",
              "| database | one transaction each, readings/s | batches of 500, readings/s |",
              "|---|---|---|"]
    lines += ["| %s | %.0f | %.0f |" % ((name,) + pair) for name, pair in store.items()]
    lines += ["", "![ingest rates](collector.png)"]
    text = "\n".join(lines) + "\n"
    print(text)
    print("bench took %.0f s" % (time.monotonic() - t_start))
    if args.only != "all":
        return 0
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "collector.md").write_text(text)
    plot(RESULTS / "collector.png", [
        ("live: %d mosquitto_pub processes -> consumer" % PUBLISHERS, rows, reference_of(rows)),
        ("backlog of %d queued in the session -> consumer" % N,
         [(name, rates[kind]) for name, kind in drains], drain_ref)])
    return 0


def reference_of(rows):
    return statistics.median(rows[0][1])


if __name__ == "__main__":
    sys.exit(main())
