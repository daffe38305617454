"""Zero-typing provisioning: get this board's MQTT credentials from the base station.

With WiFi but no MQTT credentials the board finds the base station (the configured host,
or the UDP beacon as a mere hint), asks for access over TLS pinned to ``tls.ca``, shows a
6-digit comparison code on its event stream, waits with bounded backoff while a person
decides, and stores the credentials it is given on flash (written to a temporary file,
then renamed over the old one, so a reset never leaves half a file). A base station whose
certificate does not chain to the pinned root fails the handshake: no request is sent.

Example::

    creds = Provisioner(cfg, ca_ders).obtain()   # raises ProvisionError, TlsError, NetError
    save_credentials(cfg.provisioning.credentials, creds)
"""

import binascii
import json
import os
import socket
import time

from micropython import const

from securenode import VERSION, https_client, net
from securenode.events import emit, error
from securenode.pinned_tls import PinnedTls, fingerprint
from securenode.provision_codec import (MAX_BEACON_BYTES, ProvisionError, beacon_port,
                                        comparison_code, parse_outcome)

_NONCE_BYTES = const(16)
_LISTEN_SLICE_MS = const(100)


def load_credentials(path):
    """Stored credentials as a dict, or None when there are none (or they are unreadable)."""
    try:
        with open(path) as f:
            creds = json.loads(f.read())
    except (OSError, ValueError):
        return None
    if type(creds) is not dict or type(creds.get("password")) is not str:
        return None
    return creds


def save_credentials(path, creds):
    """Write creds atomically: a reset mid-write leaves the old file or the new one."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(json.dumps(creds))
    try:
        os.remove(path)  # FAT refuses to rename over an existing file
    except OSError:
        pass
    os.rename(tmp, path)


def forget_credentials(path):
    try:
        os.remove(path)
    except OSError:
        pass


class Provisioner:
    """``idle(ms)``: how to wait between polls (the app takes readings meanwhile); by
    default a plain sleep. Each blocking step (one poll: TCP, TLS, one exchange) is bounded
    by the configured timeouts, so at most one reading slot falls in it."""

    def __init__(self, cfg, ca_ders, idle=None):
        self.cfg = cfg
        self._idle = idle or time.sleep_ms
        self.p = cfg.provisioning
        self.ca_ders = ca_ders
        self.host = self.p.host
        self.port = self.p.port
        self.server_hostname = self.p.server_hostname
        self.peer_cert = None

    def obtain(self):
        """Discover, request, wait for the decision; return the credentials dict."""
        if self.host is None:
            self._discover()
        peer = "%s:%d" % (self.host, self.port)
        nonce = os.urandom(_NONCE_BYTES)
        nonce_hex = binascii.hexlify(nonce).decode()
        status, body = self._call("/v1/auth/request", {
            "device_id": self.cfg.device_id, "name": self.p.name, "firmware": VERSION,
            "nonce": nonce_hex})
        outcome, _ = parse_outcome(status, body, peer)
        try:
            request_id = json.loads(body)["request_id"]
        except (ValueError, KeyError, TypeError):
            request_id = None
        if outcome != "pending" or type(request_id) is not int:
            raise ProvisionError("provision_protocol", peer, "request not accepted (HTTP %d, %s)"
                                 % (status, outcome))
        emit("provision_code", code=comparison_code(nonce, self.peer_cert),
             request_id=request_id, peer=peer)
        creds = self._wait(peer, request_id, nonce_hex)
        creds["base"] = [self.host, self.port, self.server_hostname]
        creds["request_id"] = request_id
        creds["nonce"] = nonce_hex
        creds["confirmed"] = False
        return creds

    def _wait(self, peer, request_id, nonce_hex):
        start = time.ticks_ms()
        wait_ms = self.p.wait_s * 1000
        delay = self.p.poll_min_ms
        while True:
            self._idle(delay)
            try:
                status, body = self._call("/v1/auth/request/%d" % request_id,
                                          {"device_id": self.cfg.device_id, "nonce": nonce_hex})
                outcome, creds = parse_outcome(status, body, peer)
            except (net.NetError, https_client.HttpError, OSError) as exc:
                # The base station may be restarting; its state survives, so keep this
                # request. A TLS failure is not retried: someone else answers there now.
                error("provision_poll", str(exc))
                outcome, creds = "pending", None
            if creds is not None:
                return creds
            if outcome == "denied":
                raise ProvisionError("provision_denied", peer, "the operator denied request %d"
                                     % request_id)
            if outcome != "pending":
                raise ProvisionError("provision_expired", peer, "request %d is %s"
                                     % (request_id, outcome))
            delay = min(delay * 2, self.p.poll_max_ms)
            if time.ticks_diff(time.ticks_ms(), start) + delay > wait_ms:
                raise ProvisionError("provision_timeout", peer, "no decision on request %d "
                                     "within %d s; asking again later"
                                     % (request_id, self.p.wait_s))

    def confirm(self, creds):
        """Tell the base station that the credentials work (it shows the device confirmed)."""
        self.host, self.port, self.server_hostname = creds["base"]
        status, body = self._call("/v1/auth/confirm", {
            "device_id": self.cfg.device_id, "request_id": creds["request_id"],
            "nonce": creds["nonce"]})
        outcome, _ = parse_outcome(status, body, "%s:%d" % (self.host, self.port))
        if outcome != "confirmed":
            raise ProvisionError("provision_protocol", "%s:%d" % (self.host, self.port),
                                 "confirmation refused (HTTP %d, %s)" % (status, outcome))

    def _discover(self):
        pinned = [fingerprint(der) for der in self.ca_ders]
        listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            listener.bind(("0.0.0.0", self.p.beacon_port))
            start = time.ticks_ms()
            while True:
                left = self.p.beacon_wait_ms - time.ticks_diff(time.ticks_ms(), start)
                if left <= 0:
                    raise ProvisionError("provision_discovery", "udp:%d" % self.p.beacon_port,
                                         "no beacon for the pinned CA within %d ms"
                                         % self.p.beacon_wait_ms)
                # Listen in slices, so that readings due meanwhile are taken between them.
                listener.settimeout(min(left, _LISTEN_SLICE_MS) / 1000)
                try:
                    data, addr = listener.recvfrom(MAX_BEACON_BYTES + 1)
                except OSError as exc:
                    if net.is_timeout(exc):
                        self._idle(0)
                        continue
                    raise
                port = beacon_port(data, pinned)
                if port is not None:
                    # The sender's address, checked by TLS against the pinned CA.
                    self.host, self.port = addr[0], port
                    self.server_hostname = self.p.server_hostname or addr[0]
                    emit("provision_beacon", host=addr[0], port=port)
                    return
        finally:
            listener.close()

    def _call(self, path, doc):
        t = self.cfg.timeouts_ms
        tls = PinnedTls(self.ca_ders, None, None, self.server_hostname, t.handshake, t.io)
        peer = "%s:%d" % (self.host, self.port)
        roots = tls.root_sets
        for index in range(len(roots)):
            tls.cadata = roots[index]
            sock = net.open_tcp(self.host, self.port, t.connect)
            try:
                stream = tls.wrap_socket(sock)
            except Exception as exc:
                sock.close()
                if index + 1 < len(roots) and tls.is_verify_failure(exc):
                    continue
                raise tls.explain(exc, self.host, self.port)
            try:
                if self.peer_cert is None:
                    # The code binds the operator's check to this very certificate.
                    if not hasattr(stream, "getpeercert"):
                        raise ProvisionError("provision_protocol", peer, "this port cannot read "
                                             "the peer certificate for the comparison code")
                    self.peer_cert = stream.getpeercert(True)
                return https_client.exchange(
                    stream, "POST", peer, path, json.dumps(doc).encode(),
                    self.p.max_response_bytes, t.io + t.handshake, peer)
            finally:
                stream.close()
                sock.close()
