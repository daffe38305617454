"""`socket` / `usocket` stand-in: loopback-only sockets gated by the virtual air.

Each board socket wraps a non-blocking CPython socket; every wait is a short
``select`` slice so the air is re-checked while a call blocks:

- no WiFi association: new operations raise OSError(EHOSTUNREACH); an established
  TCP connection raises OSError(ECONNRESET) from then on (lost with the AP);
- link "dark": nothing arrives (reads wait, then ETIMEDOUT), writes are accepted and
  held back, as TCP would retransmit them; they reach the peer if the link comes back;
- any destination outside 127.0.0.0/8 is unreachable (EHOSTUNREACH).

Stream semantics follow MicroPython: ``read(n)`` returns n bytes unless EOF comes
first, ``None`` in non-blocking mode when nothing is there, ``b""`` at EOF; a
timeout raises OSError(ETIMEDOUT) and drops what a partial read had gathered.
"""
import errno
import os
import select as _select
import socket as _socket
import time as _real_time
import types

AF_INET = 2
AF_INET6 = 10
SOCK_STREAM = 1
SOCK_DGRAM = 2
SOCK_RAW = 3
IPPROTO_IP = 0
IPPROTO_TCP = 6
IPPROTO_UDP = 17
SOL_SOCKET = 0xFFF
SO_REUSEADDR = 4
SO_KEEPALIVE = 8
TCP_NODELAY = 1
_SLICE_S = 0.02
_DNS_FAIL = {"esp32": -202, "esp8266": -2}



class StreamReads:
    """MicroPython stream reads (read, readinto, readline) over ``_read_chunk(n)``.

    ``_read_chunk`` returns up to n bytes, b"" at EOF, or None when a non-blocking read
    would block. Plain and TLS sockets share this, as both are streams on a board.
    """

    def read(self, n=None):
        if n is None:
            chunks = []
            while True:
                data = self._read_chunk(4096)
                if data is None:
                    return b"".join(chunks) if chunks else None
                if not data:
                    return b"".join(chunks)
                chunks.append(data)
        buf = bytearray()
        while len(buf) < n:
            data = self._read_chunk(n - len(buf))
            if data is None:
                return bytes(buf) if buf else None
            if not data:
                break
            buf += data
        return bytes(buf)

    def readinto(self, buf, nbytes=None):
        n = len(buf) if nbytes is None else min(nbytes, len(buf))
        data = self.read(n)
        if data is None:
            return None
        buf[:len(data)] = data
        return len(data)

    def readline(self):
        line = bytearray()
        while True:
            data = self._read_chunk(1)
            if not data:
                break
            line += data
            if data == b"\n":
                break
        return bytes(line)


def wire_bytes(buf, n=None):
    """What a MicroPython stream sends for ``buf``: str works too (its buffer is UTF-8)."""
    if isinstance(buf, str):
        buf = buf.encode()
    view = memoryview(buf)
    return bytes(view[:n] if n is not None else view)

def _err(code):
    return OSError(code, errno.errorcode.get(code, str(code)))


def make_module(state):
    mod = types.ModuleType("socket")
    for name in ("AF_INET", "AF_INET6", "SOCK_STREAM", "SOCK_DGRAM", "SOCK_RAW",
                 "IPPROTO_IP", "IPPROTO_TCP", "IPPROTO_UDP", "SOL_SOCKET",
                 "SO_REUSEADDR", "SO_KEEPALIVE", "TCP_NODELAY"):
        setattr(mod, name, globals()[name])

    def _resolve(host):
        """Hostname -> dotted quad, as the board's resolver would answer."""
        parts = host.split(".")
        if len(parts) == 4 and all(p.isdigit() for p in parts):
            return host
        if host == "localhost":
            return "127.0.0.1"
        if not state.associated():
            raise OSError(_DNS_FAIL[state.port])
        ip = state.air().get("hosts", {}).get(host)
        if ip is None:
            raise OSError(_DNS_FAIL[state.port])
        return ip

    def getaddrinfo(host, port, af=0, type=0, proto=0, flags=0):
        ip = _resolve(host)
        return [(AF_INET, type or SOCK_STREAM, proto or (IPPROTO_UDP if type == SOCK_DGRAM else IPPROTO_TCP),
                 "", (ip, port))]

    # SECURENODE_SIM_REACHABLE: extra destination IPs (comma-separated) the board may reach.
    # Only tests/bench/bench_latency.py sets it: there the board runs in its own network
    # namespace and the broker sits behind host_sim/tun_relay.py at a non-loopback address.
    reachable = set(filter(None, os.environ.get("SECURENODE_SIM_REACHABLE", "").split(",")))

    def _check_reachable(addr):
        ip = _resolve(addr[0])
        if not ip.startswith("127.") and ip not in reachable:
            raise _err(errno.EHOSTUNREACH)
        return (ip, int(addr[1]))

    class socket(StreamReads):
        def __init__(self, af=AF_INET, type=SOCK_STREAM, proto=0):
            if af != AF_INET:
                raise _err(errno.EAFNOSUPPORT)
            self._type = type
            kind = _socket.SOCK_DGRAM if type == SOCK_DGRAM else _socket.SOCK_STREAM
            self._host = _socket.socket(_socket.AF_INET, kind)
            self._host.setblocking(False)
            self._timeout = None            # None: blocking; 0: non-blocking
            self._connected = False
            self._lost = False
            self._held = bytearray()        # writes made while the link was dark

        # --- gating ---------------------------------------------------------------
        def _gate(self):
            if self._host is None:
                raise _err(errno.EBADF)
            if self._lost:
                raise _err(errno.ECONNRESET)
            if not state.associated():
                if self._connected and self._type == SOCK_STREAM:
                    self._lost = True
                    raise _err(errno.ECONNRESET)
                raise _err(errno.EHOSTUNREACH)
            if self._held and state.link() == "up":
                held, self._held = bytes(self._held), bytearray()
                self._host.setblocking(True)
                try:
                    self._host.sendall(held)
                except OSError:
                    self._lost = True
                    raise _err(errno.ECONNRESET)
                finally:
                    self._host.setblocking(False)

        def _deadline(self):
            return None if self._timeout is None else _real_time.monotonic() + self._timeout

        def _wait(self, deadline, for_write=False):
            """Wait one slice for the host socket; False when the deadline passed."""
            if deadline is not None and _real_time.monotonic() >= deadline:
                return False
            slice_s = _SLICE_S
            if deadline is not None:
                slice_s = max(0.0, min(slice_s, deadline - _real_time.monotonic()))
            if state.link() == "dark":
                _real_time.sleep(slice_s)
            elif for_write:
                _select.select([], [self._host], [], slice_s)
            else:
                _select.select([self._host], [], [], slice_s)
            return True

        # --- primitives (also used by the ssl stand-in) ---------------------------
        def _read_chunk(self, n):
            return self._recv_once(n)

        def _recv_once(self, n):
            """One receive: bytes, b"" at EOF, None if non-blocking and empty."""
            deadline = self._deadline()
            while True:
                self._gate()
                if state.link() != "dark":
                    try:
                        return self._host.recv(n)
                    except BlockingIOError:
                        pass
                    except OSError as e:
                        self._lost = True
                        raise _err(e.errno or errno.ECONNRESET)
                if self._timeout == 0:
                    return None
                if not self._wait(deadline):
                    raise _err(errno.ETIMEDOUT)

        def _send_once(self, data):
            """One send: bytes accepted, or None if non-blocking and full."""
            deadline = self._deadline()
            while True:
                self._gate()
                if state.link() == "dark":
                    self._held += data
                    return len(data)
                try:
                    return self._host.send(data)
                except BlockingIOError:
                    pass
                except OSError as e:
                    self._lost = True
                    raise _err(e.errno or errno.ECONNRESET)
                if self._timeout == 0:
                    return None
                if not self._wait(deadline, for_write=True):
                    raise _err(errno.ETIMEDOUT)

        # --- socket API -----------------------------------------------------------
        def settimeout(self, value):
            self._timeout = None if value is None else max(0.0, float(value))

        def setblocking(self, flag):
            self._timeout = None if flag else 0

        def setsockopt(self, level, optname, value):
            if level == SOL_SOCKET and optname == SO_REUSEADDR:
                self._host.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, value)
            elif level == IPPROTO_TCP and optname == TCP_NODELAY:
                # As lwIP: Nagle is on by default and this turns it off.
                self._host.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, value)

        def fileno(self):
            return self._host.fileno() if self._host is not None else -1

        def bind(self, addr):
            ip = _resolve(addr[0]) if addr[0] else "127.0.0.1"
            if ip not in ("0.0.0.0",) and not ip.startswith("127."):
                raise _err(errno.EADDRNOTAVAIL)
            self._host.bind(("127.0.0.1" if ip == "0.0.0.0" else ip, int(addr[1])))

        def connect(self, addr):
            if self._host is None:
                raise _err(errno.EBADF)
            if not state.associated():
                raise _err(errno.EHOSTUNREACH)
            target = _check_reachable(addr)
            if self._type == SOCK_DGRAM:
                self._host.connect(target)
                self._connected = True
                return
            deadline = self._deadline()
            while state.link() == "dark":    # SYNs are lost: wait for the timeout
                if not self._wait(deadline):
                    raise _err(errno.ETIMEDOUT)
                self._gate()
            code = self._host.connect_ex(target)
            if code in (errno.EINPROGRESS, errno.EWOULDBLOCK):
                if self._timeout == 0:
                    self._connected = True
                    raise _err(errno.EINPROGRESS)
                while not _select.select([], [self._host], [], 0)[1]:
                    if not self._wait(deadline, for_write=True):
                        raise _err(errno.ETIMEDOUT)
                code = self._host.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
            if code == errno.ECONNREFUSED:
                # lwIP reports a RST answering the SYN as ECONNRESET.
                raise _err(errno.ECONNRESET)
            if code:
                raise _err(code)
            self._connected = True

        def send(self, buf):
            n = self._send_once(wire_bytes(buf))
            if n is None:
                raise _err(errno.EAGAIN)
            return n

        def write(self, buf, n=None):
            data = wire_bytes(buf, n)
            done = 0
            while done < len(data):
                sent = self._send_once(data[done:])
                if sent is None:
                    return done or None
                done += sent
            return done

        def sendall(self, buf):
            data = wire_bytes(buf)
            done = 0
            while done < len(data):
                sent = self._send_once(data[done:])
                if sent is None:
                    raise _err(errno.EAGAIN)
                done += sent

        def recv(self, n):
            data = self._recv_once(n)
            if data is None:
                raise _err(errno.EAGAIN)
            return data

        def sendto(self, buf, addr):
            if self._host is None:
                raise _err(errno.EBADF)
            if not state.associated():
                raise _err(errno.EHOSTUNREACH)
            target = _check_reachable(addr)
            if state.link() == "dark":
                return len(buf)
            return self._host.sendto(bytes(buf), target)

        def recvfrom(self, n):
            deadline = self._deadline()
            while True:
                if self._host is None:
                    raise _err(errno.EBADF)
                if not state.associated():
                    raise _err(errno.EHOSTUNREACH)
                if state.link() != "dark":
                    try:
                        return self._host.recvfrom(n)
                    except BlockingIOError:
                        pass
                if self._timeout == 0:
                    raise _err(errno.EAGAIN)
                if not self._wait(deadline):
                    raise _err(errno.ETIMEDOUT)

        def close(self):
            if self._host is not None:
                self._host.close()
                self._host = None

        def __del__(self):
            self.close()

    mod.socket = socket
    mod.getaddrinfo = getaddrinfo
    mod.error = OSError
    return mod
