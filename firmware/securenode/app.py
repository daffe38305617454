"""The node's main loop: an explicit state machine from power-on to readings on the broker.

offline -> joining -> syncing -> connecting -> online, and backing_off after any failure,
with every change reported. Every reading goes into the outbox on flash (outbox.py) when it is
due, in any state, and leaves it only once the peer acknowledged it: one whose PUBACK did not
arrive is sent again (same seq, DUP) after the next connect, oldest first.

Example (what firmware/main.py does at boot)::

    from securenode import app
    app.main()
"""

import gc
import json
import os
import time

from micropython import const

from securenode import (VERSION, clock, crash, links, outbox, reading, sensor, settings,
                        states, watchdog)
from securenode.events import emit, error
from securenode.link_error import LinkError
from securenode.net import NetError
from securenode.pinned_tls import PinnedTls, TlsError

# The loop's states and the events that move it, numbered as in states.py (which holds the
# table; tests/test_firmware_states.py checks these numbers against its names). Private
# constants: the compiler inlines them, where states.ONLINE cost a global and a name each.
_OFFLINE = const(0)
_JOINING = const(1)
_SYNCING = const(2)
_CONNECTING = const(3)
_ONLINE = const(4)
_BACKOFF = const(5)
_HALTED = const(6)
_PROVISIONING = const(7)

_START = const(0)
_WIFI_UP = const(1)
_WIFI_FAILED = const(2)
_TIME_SYNCED = const(3)
_TIME_FAILED = const(4)
_CONNECTED = const(5)
_CONNECT_FAILED = const(6)
_LINK_LOST = const(7)
_BACKOFF_DONE = const(8)
_FATAL = const(9)
_STOP = const(10)
_NEED_PROVISION = const(11)
_PROVISIONED = const(12)
_PROVISION_FAILED = const(13)

# Imported where used, not here: credentials (and through it the provisioning client) only on
# a board that must be provisioned (a certificate board never loads them), commands only on
# a wss board (links.py), the validator (config.py) only at boot, wifi only while joining
# and ntp while syncing (then forgotten: used again only after an outage). crash.py
# stays: main.py holds it, so that a full, fragmented heap can still record a MemoryError
# (loaded after one, at 80K from .mpy, its import found no 640 bytes in one piece).


def _read(path):
    with open(path, "rb") as f:
        return f.read()


class Node:
    def __init__(self, cfg, reset_cause=None, last_crash=None):
        self.cfg = cfg
        self.reset_cause = reset_cause  # why this boot happened (machine.reset_cause)
        self.last_crash = last_crash    # crash.recorded(): kept until a status carries it
        self.state = _OFFLINE
        self.attempt = 0
        self.acked = 0
        self.sent_seq = 0    # last seq handed to a link: if it comes round again, it is a resend
        self.status_dropped = -1  # outbox.dropped as last reported in a status message
        self._status_sent = None  # the status payload awaiting its PUBACK
        self.due = time.ticks_ms()  # when the next sample is due, in every state
        o = cfg.outbox
        self.outbox = outbox.Outbox("outbox", o.budget_bytes, o.segment_bytes, o.max_record,
                                    o.ack_batch)
        self.synced = False
        # The link while online; before the first connect, the one made at boot (boot()).
        self.link = None
        self.tls = None
        # Two attributes are set only where they are used, to keep the instance's dict at 17
        # slots rather than 23 (96 bytes for the whole run): halt_reason where the loop halts
        # (connect's FATAL, _stop_at_limit's STOP: no other way leads to HALTED), and creds,
        # the MQTT credentials from a base station, by credentials.py on a provisioned board.
        self.topic = reading.topic(cfg.device_id)
        self.interval_ms = cfg.sample.interval_ms  # a command from the peer may change it
        s = cfg.sample
        # The configured ranges decide the out-of-range status bits: pass them on.
        self.sensor = sensor.Sampler(s.adc_pin, s.samples, s.window_ms, s.volts_per_count,
                                     s.volts_min, s.volts_max, s.hz_min, s.hz_max)

    def go(self, event):
        # A state change is rare and the next step loads modules or opens a connection:
        # collect now, while little is live, so what it allocates lands in an unfragmented heap.
        gc.collect()
        previous = self.state
        self.state = states.next_state(previous, event)
        emit("state", state=states.state_name(self.state), previous=states.state_name(previous))

    def run(self):
        self.boot()
        self.go(_START)
        # One step per turn: each is bounded by a timeout shorter than the watchdog's, and
        # each ends by going to the next state.
        while self.state != _HALTED:
            watchdog.feed()
            state = self.state
            if state == _ONLINE:
                self.online()
            elif state == _JOINING:
                self.join()
            elif state == _SYNCING:
                self.sync()
            elif state == _CONNECTING:
                self.connect()
            elif state == _BACKOFF:
                self.backoff()
            else:  # _PROVISIONING, the only state left: only such a board loads credentials
                from securenode import credentials

                self.go(_PROVISIONED if credentials.request(self) else _PROVISION_FAILED)
        emit("halted", reason=self.halt_reason)
        return 0 if self.halt_reason == "done" else 1

    def join(self):
        from securenode import wifi

        w = self.cfg.wifi
        try:
            ip = wifi.join(w.ssid, w.key, w.timeout_ms)
        except wifi.WifiError as exc:
            error("wifi_" + exc.reason, str(exc))
            self.go(_WIFI_FAILED)
            return
        finally:
            settings.forget(wifi.__name__)  # used again only after an outage
            wifi = None  # so that the collection in go() frees it
        emit("wifi_up", ip=ip)
        self.go(_WIFI_UP)

    def sync(self):
        if self.synced:
            self.go(_TIME_SYNCED)
            return
        from securenode import ntp

        n = self.cfg.ntp
        try:
            now = ntp.sync(n.host, n.timeout_ms)
        except ntp.ClockError as exc:
            # Go on: a kept RTC may still be right, and TLS will say "clock unset" if not.
            error("time_sync", str(exc))
            self.go(_TIME_FAILED)
            return
        finally:
            settings.forget(ntp.__name__)  # used again only if this sync failed
            ntp = None  # so that the collection in go() frees it
        self.synced = True
        emit("time_synced", unix_s=now)
        self.go(_TIME_SYNCED)

    def _tls(self):
        if self.tls is None:
            t = self.cfg.tls
            # A provisioned board has no certificate: it logs in with user name + password.
            self.tls = PinnedTls([_read(path) for path in t.ca], t.cert and _read(t.cert),
                                 t.key and _read(t.key),
                                 t.server_hostname, self.cfg.timeouts_ms.handshake,
                                 self.cfg.timeouts_ms.io, t.allow_unverified)
        return self.tls

    def boot(self):
        """Once, before the loop's first step: make what the first connection needs, then
        open the outbox (and report a torn tail)."""
        # What the first connection keeps for the rest of the run is made now, on a heap that
        # holds little but the modules: the SSLContext (~3 KB in one piece, kept across
        # connections) and the first link (its module and buffers). Made after the first
        # readings, they had to be found in a heap those had fragmented: the smallest heap
        # that connects fell by KB. A failure is left for connect() to report, step named.
        try:
            tls = self._tls()
            tls.context()
            if self.cfg.provisioning is None:  # a provisioned board's link needs credentials
                self.link = links.open_link(self.cfg, tls, self)
        except (TlsError, ValueError, OSError, MemoryError):
            # Keep the TLS object (and a context it made): when only the link found no room,
            # connect() must not ask for those 3 KB again on a heap the link's attempt cut up.
            self.link = None
        # The boot is over: settings.preload()'s collection every 4 KB ends here (one then
        # comes when the heap is full, at each state change and before each handshake).
        if hasattr(gc, "threshold"):  # CPython's gc (the simulator) has none
            gc.threshold(-1)
        box = self.outbox
        for seq, lost_bytes in box.open():
            error("outbox_torn", "torn write at seq %d: %d bytes dropped, earlier readings kept"
                  % (seq, lost_bytes))
            emit("outbox_torn", seq=seq, bytes=lost_bytes)
        emit("outbox_open", depth=box.depth, next_seq=box.next_seq, boots=box.boots,
             dropped=box.dropped, torn=box.torn)

    def connect(self):
        credentials = None
        if self.cfg.provisioning is not None:
            # Only a board that gets its credentials from a base station loads this.
            from securenode import credentials

            if not credentials.load(self):
                self.go(_NEED_PROVISION)
                return
        # A reading due now (the first one, at boot) is sampled before the handshake, not
        # after CONNACK: it then goes out beside the status, off the critical path.
        self._sample_if_due()
        m = self.cfg.mqtt
        try:
            tls = self._tls()
            link, self.link = self.link, None  # a link serves one connection only
            if link is None:
                link = links.open_link(self.cfg, tls, self)
            # The handshake allocates the SSLContext (~3 KB in one piece) and the session's
            # buffers: collect first, so the garbage of the last attempt is not in the way.
            gc.collect()
            link.connect()
        except TlsError as exc:
            error(exc.kind, str(exc))
            if exc.kind == "unverifiable_port":
                self.halt_reason = exc.kind
                self.go(_FATAL)
            else:
                self.go(_CONNECT_FAILED)
            return
        except (NetError, LinkError) as exc:
            error(getattr(exc, "kind", None) or exc.step, str(exc))
            if credentials:
                credentials.discard(self, exc)
            self.go(_CONNECT_FAILED)
            return
        self.link = link
        # Backoff is not reset here: a broker that accepts and then drops us would get a
        # full TLS handshake every few hundred ms. Only an acknowledgement resets it.
        emit("tls_ok", peer=link.peer, verified=tls.verified,
             root_sha256=tls.pinned if tls.verified else None)
        emit("mqtt_connected", peer=link.peer, client_id=m.client_id)
        if credentials:
            credentials.accept(self)
        self.go(_CONNECTED)

    def online(self):
        link = self.link
        last_check = time.ticks_ms()
        burst = 0
        try:
            if getattr(link, "window", 1) > 1:
                self._online_windowed(link)
                return
            self._send_status()
            while True:
                watchdog.feed()
                if self._sample_if_due():
                    burst = 0  # a fresh sample opens a new allowance for the backlog
                head = self.outbox.peek() if burst < self.cfg.outbox.send_burst else None
                if head is not None:
                    self._send_reading(head[0], head[1], window=False)
                    burst += 1
                    if self._stop_at_limit(link):
                        return
                    continue
                if self.outbox.dropped != self.status_dropped:
                    self._send_status()
                last_check = self._keep_alive(link, last_check)
                time.sleep_ms(min(50, max(0, time.ticks_diff(self.due, time.ticks_ms()))))
        except LinkError as exc:
            error(exc.kind, str(exc))
            self.outbox.flush()
            link.close()
            self.link = None
            self.go(_LINK_LOST)

    def _keep_alive(self, link, last_check):
        # One PINGREQ per keepalive when nothing else went out (MQTT 3.1.1 3.1.2.10 asks for
        # a packet within each keepalive; the broker waits 1.5 x): sent at 95% so a loop pass
        # (<= 50 ms sleep plus a sampling window) never makes it late. A dead link is still
        # found within 1.5 x keepalive by check(): nothing heard for that long.
        keepalive_ms = self.cfg.mqtt.keepalive_s * 1000
        now = time.ticks_ms()
        if keepalive_ms and link.idle_ms() >= keepalive_ms - keepalive_ms // 20:
            link.ping()  # no link sends PINGREQ by itself
        if time.ticks_diff(now, last_check) >= 100:
            last_check = now
            link.check(keepalive_ms * 3 // 2)
        return last_check

    def _online_windowed(self, link):
        # Up to link.window PUBLISHes await PUBACK at once (mqtt.inflight): the backlog drains
        # a window per round trip, and the retained status flies beside the first reading.
        # PUBACKs may come in any order; a reading leaves the outbox only once it and every
        # earlier one are acknowledged (flight is oldest first: [seq, packet id]; seq 0 is
        # the status). A kill mid-window resends the unacknowledged tail, DUP, next boot.
        box = self.outbox
        box.rewind()  # what was in flight on the last connection goes again
        flight = []
        window = link.window
        limit = self.cfg.run.max_readings
        keepalive_ms = self.cfg.mqtt.keepalive_s * 1000
        last_check = time.ticks_ms()
        self._send_status(flight)
        while True:
            watchdog.feed()
            # Refill first, then sample: the window is in flight during the sampling window
            # (~100 ms of busy-wait) instead of idling behind it.
            # A run of max_readings sends no reading beyond it: a clean stop leaves none in
            # flight (the status, seq 0, is not a reading).
            while len(flight) < window and not (limit and self.acked + len(flight)
                                                - (self._status_sent is not None) >= limit):
                record = box.next_unsent()
                if record is None:
                    break
                flight.append([record[0], self._send_reading(record[0], record[1])])
            # Never `continue` from here: on a slow flash a sample may be due on every pass,
            # and the PUBACKs must still be read below.
            sampled = self._sample_if_due()
            if (self.outbox.dropped != self.status_dropped and len(flight) < window
                    and self._status_sent is None):
                self._send_status(flight)
            if flight:
                if self._sample_early(link):
                    continue
                # Wait for a PUBACK, but never past the next sample's due time.
                link.wait_acks(max(0, min(50, time.ticks_diff(self.due, time.ticks_ms()))))
                if self._retire(link, flight):
                    return
                continue
            if sampled:
                continue  # nothing in flight: the new reading goes out (loop top) before a wait
            last_check = self._keep_alive(link, last_check)
            # Idle: wait in poll() on the socket until the next reading is due or bytes come
            # (a command, a PINGRESP, a hang-up), not in 50 ms naps: a board's CPU sleeps
            # there, and 200 simulated boards waking 20 times a second cost a host more than
            # their sampling. Bounded by the next PINGREQ and by keepalive/20 (at most 1 s),
            # so check() still finds a silent broker within 1.5 x keepalive.
            wait = min(1000, max(0, time.ticks_diff(self.due, time.ticks_ms())))
            if keepalive_ms:
                wait = min(wait, keepalive_ms // 20,
                           max(0, keepalive_ms - keepalive_ms // 20 - link.idle_ms()))
            link.wait_acks(wait)

    def _sample_early(self, link):
        # A reading due before the next PUBACK is expected is sampled now: its busy-wait
        # (sample.window_ms) overlaps the round trip instead of holding the acknowledgements
        # up. Its slot is kept: the next one is due an interval after this one was.
        expected = link.ack_expected_in_ms()
        until_due = time.ticks_diff(self.due, time.ticks_ms())
        if expected is None or not 0 < until_due < expected:
            return False
        self.due = time.ticks_add(self.due, self.interval_ms)
        self._sample()
        return True

    def _retire(self, link, flight):
        # Acknowledge in order what the broker acknowledged; True once max_readings is met.
        pending = link.ids.inflight
        while flight and flight[0][1] not in pending:
            seq = flight.pop(0)[0]
            self.attempt = 0  # acknowledged: the connection proved healthy
            if not seq:
                self._status_acked()
                continue
            head = self.outbox.peek()
            if head is None or head[0] != seq:
                continue  # dropped by the byte budget while in flight (counted there)
            self.outbox.ack(seq)
            self.acked += 1
            emit("acked", seq=seq, depth=self.outbox.depth)
            if self._stop_at_limit(link):
                return True
        return False

    def _stop_at_limit(self, link):
        # run.max_readings (tests, the simulator's fleets): once that many are acknowledged,
        # save the outbox's cursor, close the link cleanly and stop; True if so.
        limit = self.cfg.run.max_readings
        if limit and self.acked >= limit:
            self.outbox.flush()
            link.close()
            self.halt_reason = "done"
            self.go(_STOP)
            return True
        return False

    def _send_reading(self, seq, payload, window=True):
        # A reading leaves the outbox only once the peer acknowledged it; one that was sent
        # before (its ack never came) goes again with the same seq, flagged DUP on MQTT.
        dup = seq <= self.sent_seq
        self.sent_seq = seq if seq > self.sent_seq else self.sent_seq
        emit("published", seq=seq, topic=self.topic.decode(), payload=payload.decode(),
             dup=dup)
        if window:  # its PUBACK comes later, in any order: the packet id says which (_retire)
            return self.link.send_publish(self.topic, payload, dup=dup)
        self.link.publish(self.topic, payload, dup=dup)  # returns once acknowledged
        self.attempt = 0  # acknowledged: the connection proved healthy, backoff starts over
        self.outbox.ack(seq)
        self.acked += 1
        emit("acked", seq=seq, depth=self.outbox.depth)

    def _send_status(self, flight=None):
        box = self.outbox
        self.status_dropped = box.dropped
        # The retained status says why this boot happened and, until delivered once, what
        # crashed the run before it (crash.py); the record is then cleared from flash.
        payload = ('{"status":"online","version":"%s","boot":%d,"depth":%d,"dropped":%d,'
                   '"torn":%d,"reset_cause":%s,"crash":%s}' % (
                       VERSION, box.boots, box.depth, box.dropped, box.torn,
                       json.dumps(self.reset_cause), json.dumps(self.last_crash))).encode()
        if flight is None:  # one at a time: publish_status returns after the PUBACK
            if self.link.publish_status(payload):
                self.attempt = 0  # acknowledged
                self._status_sent = payload
                self._status_acked()
            return
        # Windowed: its PUBACK is retired in order with the readings' (seq 0 in flight).
        packet_id = self.link.publish_status_async(payload)
        if packet_id is not None:
            self._status_sent = payload
            flight.append([0, packet_id])

    def _status_acked(self):
        emit("status", payload=self._status_sent.decode())
        self._status_sent = None
        if self.last_crash is not None:  # the status just acknowledged carried it
            crash.clear()
            self.last_crash = None

    def _sample_if_due(self):
        """Take a reading into the outbox when one is due, in any state; True if it did."""
        # Every waiting loop (online, backoff, idle between provisioning polls) comes
        # through here: each pass is bounded, so it feeds the watchdog.
        watchdog.feed()
        late = time.ticks_diff(time.ticks_ms(), self.due)
        if late < 0:
            return False
        # Missed slots (a long blocking step) are not made up: one reading now, then on cadence.
        missed = late // self.interval_ms
        self.due = time.ticks_add(self.due, self.interval_ms * (1 + missed))
        if missed:
            emit("slots_missed", slots=missed, late_ms=late)
        self._sample()
        return True

    def idle(self, delay_ms):
        """Wait ``delay_ms`` while taking each reading as it falls due (a backoff, or a step
        that waits for someone else, e.g. provisioning between polls); returns after it.

        >>> node.idle(1000)   # about 5 readings stored at a 200 ms interval
        """
        until = time.ticks_add(time.ticks_ms(), delay_ms)
        while True:
            self._sample_if_due()
            left = time.ticks_diff(until, time.ticks_ms())
            if left <= 0:
                return
            time.sleep_ms(min(50, left, max(0, time.ticks_diff(self.due, time.ticks_ms()))))

    def _sample(self):
        voltage, freq, status = self.sensor.read()
        box = self.outbox
        seq = box.next_seq
        try:
            payload = reading.encode(self.cfg.device_id, seq, clock.unix_time(), status,
                                     voltage, freq)
        except (reading.ReadingError, MemoryError) as exc:
            # One reading that cannot be built is reported and skipped; the next may succeed
            # (a full heap is collected by then). The seq is not used, so none goes missing.
            error("reading_memory" if isinstance(exc, MemoryError) else "reading",
                  str(exc) or "no memory for a reading")
            return
        dropped = box.dropped
        try:
            box.append(seq, payload)
        except outbox.OutboxError as exc:
            error("outbox_write", str(exc))  # flash full or failing: said, never silent
            return
        if box.dropped != dropped:
            emit("outbox_dropped", dropped=box.dropped - dropped, total=box.dropped)
        emit("stored", seq=seq, depth=box.depth, flash_bytes=box.bytes_written)

    def backoff(self):
        b = self.cfg.backoff
        delay = states.backoff_ms(self.attempt, b.min_ms, b.max_ms,
                                  int.from_bytes(os.urandom(4), "little"))
        self.attempt += 1
        emit("backoff", delay_ms=delay, attempt=self.attempt)
        self.idle(delay)  # readings are due while offline too: they wait in the outbox
        self.go(_BACKOFF_DONE)



def main(path="config.json"):
    # What runs once before the loop (reset cause, configuration, watchdog) is in
    # startup.py, given back before the first step.
    from securenode import startup

    node = startup.boot(path)
    settings.forget(startup.__name__)
    startup = None
    return 1 if node is None else node.run()
