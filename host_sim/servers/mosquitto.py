"""A real Mosquitto broker on 127.0.0.1 for the simulator and the tests.

TLS listener that requires a client certificate and takes the certificate's CN as the user
name, an ACL that confines each device to ``devices/<its id>/#``, and read access to every
device's readings for the named subscribers. On every listener the client id is replaced by
that user name (``use_username_as_clientid``): a client can only ever open, resume or wipe
the session of its own identity, so a board connecting as client id ``collector`` with a
clean session cannot delete the collector's queued readings. The collector's session is
therefore keyed by its certificate's CN, whatever client id it asks for. The broker's files live in a scratch directory
readable by the ``mosquitto`` user, because Mosquitto started as root drops to that user.

Example::

    with Broker(ca_pem, server_pem, server_key, subscribers=["sim-subscriber"]) as broker:
        print(broker.port)   # a free loopback port, listening
"""

import grp
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

MOSQUITTO_PATHS = ("/usr/sbin/mosquitto", "/usr/bin/mosquitto")


class BrokerError(Exception):
    pass


def mosquitto_binary():
    found = shutil.which("mosquitto") or next((p for p in MOSQUITTO_PATHS if os.path.exists(p)),
                                             None)
    if not found:
        raise BrokerError("mosquitto is not installed: run `make` (it apt-installs mosquitto)")
    return found


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def acl_text(subscribers):
    lines = ["# Each device reads and writes only under its own id (CN = user name)."]
    lines.append("pattern readwrite devices/%u/#")
    for name in subscribers:
        lines += ["", "user %s" % name, "topic read devices/+/readings",
                  "topic read devices/+/status"]
    return "\n".join(lines) + "\n"


class Broker:
    def __init__(self, ca_pem, server_pem, server_key, subscribers=(), port=None,
                 password_listener=False, websockets=False, persistence=False,
                 max_inflight=None):
        self.files = {"ca.pem": Path(ca_pem), "server.pem": Path(server_pem),
                      "server.key": Path(server_key)}
        self.subscribers = list(subscribers)
        self.port = port or free_port()
        # Provisioned devices (tools/basestation.py) log in with user name + password on a
        # second TLS listener; the same ACL pattern confines them to devices/<user>/#.
        self.password_port = free_port() if password_listener else None
        self.password_path = None
        # MQTT over wss (firmware mqtt_wss_link): same TLS, certificates and ACL.
        self.websockets_port = free_port() if websockets else None
        self.proc = None
        self.workdir = None
        self.log_path = None
        # Keep persistent sessions and their queued QoS 1 messages across a restart (saved
        # at a clean stop and every second) and never drop queued messages, as the
        # collector's session needs.
        self.persistence = persistence
        # QoS 1 messages the broker sends a client before it waits for PUBACKs (Mosquitto's
        # max_inflight_messages, 20 when None). A collector that commits and acknowledges
        # in batches needs a window at least a batch wide.
        self.max_inflight = max_inflight

    def _lay_out(self):
        # mkdtemp gives 0700; open it to the mosquitto group only, keys stay unreadable to others.
        self.workdir = Path(tempfile.mkdtemp(prefix="securenode-broker-"))
        for name, src in self.files.items():
            shutil.copyfile(src, self.workdir / name)
        (self.workdir / "acl").write_text(acl_text(self.subscribers))
        if self.password_port:
            self.password_path = self.workdir / "passwd"
            self.password_path.write_text("")
        (self.workdir / "mosquitto.conf").write_text(self.config_text())
        self.log_path = self.workdir / "mosquitto.log"
        (self.workdir / "persist").mkdir()  # the broker (as mosquitto) must write here
        if os.geteuid() == 0:
            uid = pwd.getpwnam("mosquitto").pw_uid if _user_exists("mosquitto") else 0
            gid = grp.getgrnam("mosquitto").gr_gid if _group_exists("mosquitto") else 0
            os.chown(self.workdir, 0, gid)
            os.chmod(self.workdir, 0o750)
            for path in self.workdir.iterdir():
                os.chown(path, uid if path.name == "server.key" else 0, gid)
                os.chmod(path, 0o600 if path.name == "server.key" else 0o640)
            os.chown(self.workdir / "persist", uid, gid)
            os.chmod(self.workdir / "persist", 0o700)
        else:
            os.chmod(self.workdir / "server.key", 0o600)

    def config_text(self):
        return "\n".join([
            "per_listener_settings false",
            "allow_anonymous false",
            "persistence %s" % ("true" if self.persistence else "false"),
            "persistence_location %s/" % (self.workdir / "persist"),
            "autosave_interval 1",
            # With persistence (a collector's session) nothing is dropped for a slow
            # subscriber: the default queue limit (1000) discards the excess silently.
            "max_queued_messages %d" % (0 if self.persistence else 1000),
        ] + ([] if self.max_inflight is None else [
            "max_inflight_messages %d" % self.max_inflight,
        ]) + [
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "acl_file %s" % (self.workdir / "acl"),
            "",
        ] + self._tls_listener_lines(self.port, [
            "require_certificate true",
            "use_identity_as_username true",
            "use_username_as_clientid true",
            "set_tcp_nodelay true",
        ]) + self._password_listener_lines() + self._websockets_listener_lines())

    def _tls_listener_lines(self, port, settings):
        # Every listener binds loopback only and presents the same server certificate.
        return ["listener %d 127.0.0.1" % port] + settings + [
            "cafile %s" % (self.workdir / "ca.pem"),
            "certfile %s" % (self.workdir / "server.pem"),
            "keyfile %s" % (self.workdir / "server.key"),
            "",
        ]

    def _websockets_listener_lines(self):
        if not self.websockets_port:
            return []
        # Mosquitto 2.0.11 hands websockets listeners to libwebsockets, which binds every
        # interface ("*:port", IPv4 and IPv6) unless socket_domain is set: with ipv4 it
        # honours the 127.0.0.1 bind (tests/test_wss_mqtt.py checks with `ss`).
        return self._tls_listener_lines(self.websockets_port, [
            "protocol websockets",
            "socket_domain ipv4",
            "require_certificate true",
            "use_identity_as_username true",
            "use_username_as_clientid true",
        ])

    def _password_listener_lines(self):
        if not self.password_port:
            return []
        # per_listener_settings is false, so password_file is global; Mosquitto skips the
        # password check where use_identity_as_username takes the name from the certificate.
        return ["password_file %s" % self.password_path] + self._tls_listener_lines(
            self.password_port, ["require_certificate false", "use_username_as_clientid true",
                                 "set_tcp_nodelay true"])

    def reload(self):
        """SIGHUP: Mosquitto re-reads its password file and ACL without dropping clients."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)

    def start(self, timeout_s=10):
        if self.workdir is None:
            self._lay_out()
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([mosquitto_binary(), "-c", str(self.workdir / "mosquitto.conf")],
                                     stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        # Ready once every listener accepts: the websockets one opens after the others.
        waiting = [p for p in (self.port, self.websockets_port, self.password_port) if p]
        deadline = time.monotonic() + timeout_s
        while waiting and time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BrokerError("mosquitto exited with %s at start:\n%s"
                                  % (self.proc.returncode, self.log()))
            try:
                with socket.create_connection(("127.0.0.1", waiting[0]), timeout=0.2):
                    waiting.pop(0)
            except OSError:
                time.sleep(0.05)
        if not waiting:
            return self
        self.stop()
        raise BrokerError("mosquitto did not listen on 127.0.0.1:%d within %ss:\n%s"
                          % (waiting[0], timeout_s, self.log()))

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, sig=None):
        if self.proc is not None and self.proc.poll() is None:
            if sig is None:
                self.proc.terminate()
            else:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def close(self):
        self.stop()
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()


def _user_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


def _group_exists(name):
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False
