"""The node's main loop: an explicit state machine from power-on to readings on the broker.

offline -> joining -> syncing -> connecting -> online, and backing_off after any failure,
with every change reported. A reading whose PUBACK did not arrive is sent again (same seq)
after the next connect.

Example (what firmware/main.py does at boot)::

    from securenode import app
    app.main()
"""

import os
import sys
import time

from securenode import VERSION, clock, config, links, reading, sensor, states, wifi
from securenode.events import emit, error
from securenode.mqtt_link import MqttError
from securenode.net import NetError
from securenode.pinned_tls import PinnedTls, TlsError


def _read(path):
    with open(path, "rb") as f:
        return f.read()


class Node:
    def __init__(self, cfg):
        self.cfg = cfg
        self.state = states.OFFLINE
        self.attempt = 0
        self.seq = 0
        self.acked = 0
        self.pending = None  # (seq, payload) published but not yet acknowledged
        self.synced = False
        self.link = None
        self.tls = None
        self.halt_reason = None
        self.topic = reading.topic(cfg.device_id)
        self.interval_ms = cfg.sample.interval_ms  # a command from the peer may change it
        s = cfg.sample
        self.sampler = sensor.Sampler(s.adc_pin, s.samples, s.window_ms, s.volts_per_count)

    def go(self, event):
        previous = self.state
        self.state = states.next_state(previous, event)
        emit("state", state=states.state_name(self.state), previous=states.state_name(previous))

    def run(self):
        self.go(states.START)
        while self.state != states.HALTED:
            step = self._steps.get(self.state)
            step(self)
        emit("halted", reason=self.halt_reason)
        return 0 if self.halt_reason == "done" else 1

    def join(self):
        w = self.cfg.wifi
        try:
            ip = wifi.join(w.ssid, w.key, w.timeout_ms)
        except wifi.WifiError as exc:
            error("wifi_" + exc.reason, str(exc))
            self.go(states.WIFI_FAILED)
            return
        emit("wifi_up", ip=ip)
        self.go(states.WIFI_UP)

    def sync(self):
        if self.synced:
            self.go(states.TIME_SYNCED)
            return
        n = self.cfg.ntp
        try:
            now = clock.sync(n.host, n.timeout_ms)
        except clock.ClockError as exc:
            # Go on: a kept RTC may still be right, and TLS will say "clock unset" if not.
            error("time_sync", str(exc))
            self.go(states.TIME_FAILED)
            return
        self.synced = True
        emit("time_synced", unix_s=now)
        self.go(states.TIME_SYNCED)

    def _tls(self):
        if self.tls is None:
            t = self.cfg.tls
            self.tls = PinnedTls([_read(path) for path in t.ca], _read(t.cert), _read(t.key),
                                 t.server_hostname, self.cfg.timeouts_ms.handshake,
                                 self.cfg.timeouts_ms.io, t.allow_unverified)
        return self.tls

    def connect(self):
        m = self.cfg.mqtt
        try:
            tls = self._tls()
            link = links.open_link(self.cfg, tls)
            link.connect()
        except TlsError as exc:
            error(exc.kind, str(exc))
            if exc.kind == "unverifiable_port":
                self.halt_reason = exc.kind
                self.go(states.FATAL)
            else:
                self.go(states.CONNECT_FAILED)
            return
        except (NetError, MqttError) as exc:
            error(getattr(exc, "kind", None) or exc.step, str(exc))
            self.go(states.CONNECT_FAILED)
            return
        self.link = link
        self.attempt = 0
        emit("tls_ok", peer=link.peer, verified=tls.verified,
             root_sha256=tls.pinned if tls.verified else None)
        emit("mqtt_connected", peer=link.peer, client_id=m.client_id,
             umqtt_api="1.3.4" if link.legacy_api else "current")
        self.go(states.CONNECTED)

    def online(self):
        keepalive_ms = self.cfg.mqtt.keepalive_s * 1000
        last_io = time.ticks_ms()
        due = time.ticks_ms()
        try:
            while True:
                if self.pending is None:
                    if time.ticks_diff(due, time.ticks_ms()) > 0:
                        if keepalive_ms and time.ticks_diff(time.ticks_ms(), last_io) > keepalive_ms // 2:
                            self.link.ping()
                            last_io = time.ticks_ms()
                        time.sleep_ms(min(50, max(0, time.ticks_diff(due, time.ticks_ms()))))
                        continue
                    due = time.ticks_add(due, self.interval_ms)
                    self.pending = self._sample()
                seq, payload = self.pending
                emit("published", seq=seq, topic=self.topic.decode(), payload=payload.decode())
                self.link.publish(self.topic, payload)
                last_io = time.ticks_ms()
                self.pending = None
                self.acked += 1
                emit("acked", seq=seq)
                limit = self.cfg.run.max_readings
                if limit and self.acked >= limit:
                    self.link.close()
                    self.halt_reason = "done"
                    self.go(states.STOP)
                    return
        except MqttError as exc:
            error(exc.kind, str(exc))
            self.link.close()
            self.link = None
            self.go(states.LINK_LOST)

    def _sample(self):
        voltage, freq, status = self.sampler.read()
        self.seq += 1
        payload = reading.encode(self.cfg.device_id, self.seq, clock.unix_time(), status,
                                 voltage, freq)
        return self.seq, payload

    def backoff(self):
        b = self.cfg.backoff
        delay = states.backoff_ms(self.attempt, b.min_ms, b.max_ms,
                                  int.from_bytes(os.urandom(4), "little"))
        self.attempt += 1
        emit("backoff", delay_ms=delay, attempt=self.attempt)
        time.sleep_ms(delay)
        self.go(states.BACKOFF_DONE)

    _steps = {
        states.JOINING: join,
        states.SYNCING: sync,
        states.CONNECTING: connect,
        states.ONLINE: online,
        states.BACKOFF: backoff,
    }


def main(config_path="config.json"):
    emit("boot", version=VERSION, platform=sys.platform)
    try:
        cfg = config.load(config_path)
    except config.ConfigError as exc:
        error("config", str(exc))
        emit("halted", reason="config")
        return 1
    return Node(cfg).run()
