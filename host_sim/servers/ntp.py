"""A tiny SNTP server on 127.0.0.1 for simulated boards (``ntptime`` queries it).

Example::

    with NtpServer(offset_s=0) as ntp:
        host, port = ntp.address       # pass as --ntp host:port to host_sim.board

Run standalone: ``python -m host_sim.servers.ntp [--port N] [--offset-s S]``.
"""
import argparse
import socket
import struct
import threading
import time

NTP_UNIX_DELTA_S = 2208988800      # 1900-01-01 -> 1970-01-01


class NtpServer:
    """Answers SNTP client queries with host time + offset_s (mode 4, stratum 1)."""

    def __init__(self, offset_s=0, host="127.0.0.1", port=0):
        self.offset_s = offset_s
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind((host, port))
        self._sock.settimeout(0.1)
        self.address = self._sock.getsockname()
        self._stop = threading.Event()
        self._thread = None
        self.queries = 0

    def _reply(self, query):
        now = time.time() + self.offset_s + NTP_UNIX_DELTA_S
        secs = int(now)
        frac = int((now - secs) * (1 << 32)) & 0xFFFFFFFF
        version = (query[0] >> 3) & 0x7 or 4
        header = struct.pack("!BBbb", (version << 3) | 4, 1, 0, -20)
        origin = query[40:48]
        return (header + struct.pack("!II", 0, 0) + b"LOCL"
                + struct.pack("!II", secs, frac) + origin
                + struct.pack("!II", secs, frac) + struct.pack("!II", secs, frac))

    def _serve(self):
        while not self._stop.is_set():
            try:
                query, peer = self._sock.recvfrom(512)
            except socket.timeout:
                continue
            except OSError:
                return
            if len(query) < 48 or query[0] & 0x7 != 3:
                continue
            self.queries += 1
            self._sock.sendto(self._reply(query), peer)

    def start(self):
        self._thread = threading.Thread(target=self._serve, name="ntp-server", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self._sock.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m host_sim.servers.ntp",
                                description="Serve SNTP on 127.0.0.1 for simulated boards.")
    p.add_argument("--port", type=int, default=0, help="UDP port (default: a free one)")
    p.add_argument("--offset-s", type=float, default=0.0, help="added to host time")
    args = p.parse_args(argv)
    with NtpServer(offset_s=args.offset_s, port=args.port) as server:
        print("ntp serving on %s:%d" % server.address, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
