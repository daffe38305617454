"""The base station's connection front end: what a client costs before it is served.

One thread runs a selector over every open connection. It accepts, waits for the
ClientHello, does the TLS handshake and reads the request (a head of at most 8 KB and a
body of at most ``max_body_bytes``) all without blocking, against deadlines; only a
complete request goes to one of a few worker threads, which answer it. So a client that
connects and says nothing, or sends its body a byte every 8 s, costs a socket and at most
~50 KB of TLS state, never a thread; it is closed at the handshake timeout or the request
deadline. Connections are capped per address (over it, closed at once) and in total: at
the total cap, the connection that has waited longest (over 0.5 s) is closed to make room,
so slow clients from many addresses cannot keep a quick one out.

    front = Frontend(("127.0.0.1", 0), ssl_ctx, Limits(), serve=lambda req, addr: ...)
    threading.Thread(target=front.serve_forever).start()
    ...
    front.shutdown(); front.server_close()
"""

import collections
import concurrent.futures
import logging
import re
import resource
import selectors
import socket
import ssl
import threading
import time

MAX_CONNECTIONS = 1024       # open at once (each ~50 KB of TLS state at most)
MAX_PER_SOURCE = 8           # a browser opens up to 6 to one host
WORKERS = 16                 # threads that answer complete requests
HANDSHAKE_TIMEOUT_S = 5.0
REQUEST_DEADLINE_S = 10.0
MAX_HEAD_BYTES = 8192
EVICT_AFTER_S = 0.5          # at the cap, a connection waiting longer may be closed for a new one

_CONTENT_LENGTH_RE = re.compile(rb"\r\ncontent-length:[ \t]*([0-9]{1,9})[ \t]*\r\n", re.I)

log = logging.getLogger("basestation")


class Limits:
    """What one client may cost; every bound of the front end and the login throttle."""

    def __init__(self, max_connections=MAX_CONNECTIONS, max_per_source=MAX_PER_SOURCE,
                 workers=WORKERS, handshake_timeout_s=HANDSHAKE_TIMEOUT_S,
                 request_deadline_s=REQUEST_DEADLINE_S, max_body_bytes=4096,
                 login_concurrency=2, login_delay_s=1.0):
        self.max_connections = max_connections
        self.max_per_source = max_per_source
        self.workers = workers
        self.handshake_timeout_s = handshake_timeout_s
        self.request_deadline_s = request_deadline_s
        self.max_body_bytes = max_body_bytes
        self.login_concurrency = login_concurrency
        self.login_delay_s = login_delay_s


class Request:
    """A complete request read by the front end: the TLS socket and the bytes read."""

    __slots__ = ("sock", "data", "deadline")

    def __init__(self, sock, data, deadline):
        self.sock, self.data, self.deadline = sock, data, deadline


class _Conn:
    __slots__ = ("sock", "addr", "state", "buf", "accepted", "handshake_by", "deadline")

    def __init__(self, sock, addr, limits, now):
        self.sock, self.addr = sock, addr
        self.accepted = now
        self.state = "hello"         # -> handshake -> request -> work
        self.buf = bytearray()
        self.handshake_by = now + limits.handshake_timeout_s
        self.deadline = now + limits.request_deadline_s


class _Tally:
    """One log line per kind of flood event per 5 s, with how many happened since."""

    def __init__(self):
        self.counts = collections.Counter()
        self.texts = {}
        self.next_line = {}

    def note(self, kind, text, now):
        self.counts[kind] += 1
        self.texts[kind] = text
        self.flush(now)

    def flush(self, now):
        for kind in [k for k in self.counts if now >= self.next_line.get(k, 0)]:
            n = self.counts.pop(kind)
            log.warning("%s%s", self.texts[kind],
                        " (%d times in the last 5 s)" % n if n > 1 else "")
            self.next_line[kind] = now + 5


class Frontend:
    """Accept, handshake and read without blocking; ``serve(Request, addr)`` on a worker."""

    def __init__(self, address, ssl_ctx, limits, serve):
        self.ctx, self.limits, self.serve = ssl_ctx, limits, serve
        _room_for(limits)
        self.socket = socket.create_server(address, backlog=128)
        self.socket.setblocking(False)
        self.server_address = self.socket.getsockname()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.socket, selectors.EVENT_READ, None)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=limits.workers, thread_name_prefix="basestation-worker")
        self._lock = threading.Lock()       # the counts: workers release their connection
        self._open = 0
        self._per_source = collections.Counter()
        self._waiting = collections.OrderedDict()   # in the selector, oldest first
        self._tally = _Tally()
        self._accept_paused_until = None
        self._stop = threading.Event()
        self._stopped = threading.Event()

    # --- the loop ---------------------------------------------------------------------
    def serve_forever(self, poll_interval=0.1):
        next_sweep = 0.0
        try:
            while not self._stop.is_set():
                for key, mask in self._sel.select(poll_interval):
                    if key.data is None:
                        self._accept()
                        continue
                    try:
                        self._step(key.data)
                    except Exception as exc:     # a bug: lose this connection, not the loop
                        log.error("connection from %s failed: %s: %s", key.data.addr[0],
                                  type(exc).__name__, exc)
                        log.debug("connection failed", exc_info=True)
                        self._close(key.data)
                now = time.monotonic()
                if now >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + 0.1
        finally:
            self._stopped.set()

    def shutdown(self):
        self._stop.set()
        self._stopped.wait(5)

    def server_close(self):
        for key in list(self._sel.get_map().values()):
            if key.data is not None:
                self._close(key.data)
        self._sel.close()
        self.socket.close()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def counts(self):
        """(connections open, addresses with one open)."""
        with self._lock:
            return self._open, len(self._per_source)

    # --- steps ------------------------------------------------------------------------
    def _accept(self):
        now = time.monotonic()
        for _ in range(64):                 # drain a burst, then serve the others too
            try:
                sock, addr = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # EMFILE and friends: the socket stays readable, so stop listening for a
                # moment instead of spinning on it.
                self._tally.note("accept", "accept failed: %s" % (exc.strerror or exc), now)
                self._sel.unregister(self.socket)
                self._accept_paused_until = now + 0.1
                return
            ip = addr[0]
            if (self._open >= self.limits.max_connections
                    and self._per_source[ip] < self.limits.max_per_source):
                self._evict_oldest(now)
            with self._lock:
                admitted = (self._open < self.limits.max_connections
                            and self._per_source[ip] < self.limits.max_per_source)
                if admitted:
                    self._open += 1
                    self._per_source[ip] += 1
            if not admitted:
                sock.close()
                self._tally.note("refused", "refused connections over the caps (%d open, %d "
                                 "per address), e.g. from %s" % (
                                     self.limits.max_connections, self.limits.max_per_source,
                                     ip), now)
                continue
            sock.setblocking(False)
            conn = _Conn(sock, addr, self.limits, now)
            self._sel.register(sock, selectors.EVENT_READ, conn)
            self._waiting[id(conn)] = conn

    def _evict_oldest(self, now):
        # At the cap, the connection that has stalled longest makes room: a client that
        # finishes its request in milliseconds gets in, however many are held open slowly.
        if not self._waiting:
            return
        oldest = next(iter(self._waiting.values()))
        if now - oldest.accepted < EVICT_AFTER_S:
            return
        self._tally.note("evicted", "closed the longest-waiting connections to make room "
                         "(%d open), e.g. from %s after %.1f s" % (
                             self.limits.max_connections, oldest.addr[0],
                             now - oldest.accepted), now)
        self._close(oldest)

    def _step(self, conn):
        try:
            if conn.state == "hello":
                if not conn.sock.recv(1, socket.MSG_PEEK):
                    return self._close(conn)     # connected and left without a word
                # The ClientHello is here: only now does the connection get TLS state.
                self._sel.unregister(conn.sock)
                conn.sock = self.ctx.wrap_socket(conn.sock, server_side=True,
                                                 do_handshake_on_connect=False)
                self._sel.register(conn.sock, selectors.EVENT_READ, conn)
                conn.state = "handshake"
            if conn.state == "handshake":
                try:
                    conn.sock.do_handshake()
                except ssl.SSLWantReadError:
                    return self._want(conn, selectors.EVENT_READ)
                except ssl.SSLWantWriteError:
                    return self._want(conn, selectors.EVENT_WRITE)
                conn.state = "request"
                self._want(conn, selectors.EVENT_READ)
            while True:
                try:
                    data = conn.sock.recv(16384)
                except ssl.SSLWantReadError:
                    return self._want(conn, selectors.EVENT_READ)
                except ssl.SSLWantWriteError:
                    return self._want(conn, selectors.EVENT_WRITE)
                if not data:
                    log.info("connection from %s ended mid-request: the client closed it",
                             conn.addr[0])
                    return self._close(conn)
                conn.buf += data
                done = self._complete(conn.buf)
                if done is None:
                    log.info("connection from %s closed: request head over %d bytes",
                             conn.addr[0], MAX_HEAD_BYTES)
                    return self._close(conn)
                if done:
                    return self._dispatch(conn)
        except (ssl.SSLError, OSError) as exc:
            what = "TLS handshake with %s failed" if conn.state in ("hello", "handshake") \
                else "connection from %s ended mid-request"
            log.info("%s: %s", what % conn.addr[0], reason(exc))
            self._close(conn)

    def _complete(self, buf):
        """True: head and body are here (or the body is too long to wait for); False: read
        on; None: the head is too long."""
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None if len(buf) > MAX_HEAD_BYTES else False
        if end > MAX_HEAD_BYTES:
            return None
        match = _CONTENT_LENGTH_RE.search(bytes(buf[:end + 2]))
        length = int(match.group(1)) if match else 0
        # A body over the bound is refused (413) by the handler without waiting for it.
        return length > self.limits.max_body_bytes or len(buf) >= end + 4 + length

    def _want(self, conn, events):
        if self._sel.get_key(conn.sock).events != events:
            self._sel.modify(conn.sock, events, conn)

    def _dispatch(self, conn):
        self._waiting.pop(id(conn), None)
        self._sel.unregister(conn.sock)
        conn.state = "work"
        try:
            self._pool.submit(self._work, conn)
        except RuntimeError:                 # shutting down
            self._release(conn)

    def _work(self, conn):
        try:
            conn.sock.setblocking(True)
            # Only the answer is left to send: it gets what remains of the deadline.
            conn.sock.settimeout(max(0.5, conn.deadline - time.monotonic()))
            self.serve(Request(conn.sock, bytes(conn.buf), conn.deadline), conn.addr)
        except (ssl.SSLError, OSError) as exc:
            log.info("connection from %s ended before the answer was sent: %s", conn.addr[0],
                     reason(exc))
        except Exception as exc:             # a bug, not the client's doing: say so once
            log.error("request from %s failed: %s: %s", conn.addr[0], type(exc).__name__, exc)
            log.debug("request from %s failed", conn.addr[0], exc_info=True)
        finally:
            self._release(conn)

    def _sweep(self, now):
        self._tally.flush(now)
        if self._accept_paused_until is not None and now >= self._accept_paused_until:
            self._accept_paused_until = None
            self._sel.register(self.socket, selectors.EVENT_READ, None)
        for key in list(self._sel.get_map().values()):
            conn = key.data
            if conn is None:
                continue
            if conn.state in ("hello", "handshake") and now > conn.handshake_by:
                self._tally.note("handshake", "closed connections without a TLS handshake "
                                 "within %g s, e.g. from %s" % (
                                     self.limits.handshake_timeout_s, conn.addr[0]), now)
                self._close(conn)
            elif now > conn.deadline:
                log.info("connection from %s closed: request not done within %g s",
                         conn.addr[0], self.limits.request_deadline_s)
                self._close(conn)

    def _close(self, conn):
        self._waiting.pop(id(conn), None)
        try:
            self._sel.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        self._release(conn)

    def _release(self, conn):
        try:
            conn.sock.close()
        except OSError:
            pass
        ip = conn.addr[0]
        with self._lock:
            self._open -= 1
            self._per_source[ip] -= 1
            if not self._per_source[ip]:
                del self._per_source[ip]


def _room_for(limits):
    """Raise the soft open-files limit to fit the cap, or lower the cap to fit the limit:
    a 1,024 soft limit (a common default) would otherwise fail accept() with EMFILE."""
    want = limits.max_connections + 128          # + SQLite, the log, the broker tools
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        new_soft = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new_soft, hard))
            soft = new_soft
        except (ValueError, OSError):
            pass
        if soft < want:
            limits.max_connections = max(1, soft - 128)
            log.warning("open files limited to %d: at most %d connections at once", soft,
                        limits.max_connections)


def reason(exc):
    """A short, secret-free description of a connection error, for one log line."""
    if isinstance(exc, ssl.SSLEOFError):
        return "the client closed the connection without a TLS close_notify"
    if isinstance(exc, ssl.SSLError):
        return exc.reason or exc.__class__.__name__
    if isinstance(exc, TimeoutError):
        return "timed out"
    return exc.strerror or exc.__class__.__name__
