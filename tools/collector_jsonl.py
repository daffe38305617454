"""The collector's JSON-lines listener: one asyncio event loop, TLS with client certificates.

One reading per line, answered ``{"ack": seq}`` (or ``{"nack": seq, "reason": ...}`` when it
is kept as a reject); a status line (no "seq") is answered ``{"ack": "status"}``, and
``{"ping": 1}`` with ``{"pong": 1}``. The certificate's CN is the device id.

Every client is bounded, whatever it does:
- at most ``max_clients`` connections, ``max_per_address`` from one address: the next
  one is closed at once, before any TLS work;
- the TLS handshake must finish within ``handshake_s``;
- after the first byte of a line, the whole line must arrive within ``line_s`` (a body
  trickled a byte at a time is cut off), and a silent connection is closed after ``idle_s``;
- a line is at most 4096 bytes.
The event loop is one thread however many clients there are; storing runs on one worker
thread (the store is one database connection).

    server = JsonlServer(store, "127.0.0.1", 0, ca, cert, key).start()
    server.port
"""

import asyncio
import collections
import concurrent.futures
import json
import ssl
import threading

from tools.connection_caps import ConnectionCaps
from tools.collector_store import CollectorError, MAX_PAYLOAD_BYTES, StoreError, handle_message

MAX_LINE_BYTES = MAX_PAYLOAD_BYTES


class JsonlServer:
    def __init__(self, store, host, port, ca, cert, key, max_clients=128, max_per_address=16,
                 handshake_s=10.0, line_s=30.0, idle_s=300.0):
        self.store = store
        self.host, self.port = host, port
        self.max_clients, self.max_per_address = max_clients, max_per_address
        self.handshake_s, self.line_s, self.idle_s = handshake_s, line_s, idle_s
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            self.context.load_cert_chain(str(cert), str(key))
            self.context.load_verify_locations(str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise CollectorError("JSON-lines listener: cannot load --ca %s / server cert %s / "
                                 "key %s: %s" % (ca, cert, key,
                                                 getattr(exc, "strerror", None) or exc)) from None
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.failed = threading.Event()
        self.failure = None
        self.refused = collections.Counter()    # why connections were cut: counts only
        self._caps = ConnectionCaps(max_clients, max_per_address)
        self._store_worker = concurrent.futures.ThreadPoolExecutor(1, "jsonl-store")
        self._loop = None
        self._server = None
        self._thread = None
        self._ready = threading.Event()

    @property
    def clients(self):
        return self._caps.open

    # --- lifecycle ---------------------------------------------------------------------
    def start(self, timeout_s=10):
        self._thread = threading.Thread(target=self._run, name="jsonl-loop", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout_s) or self.failure:
            raise CollectorError("JSON-lines listener on %s:%s did not start: %s"
                                 % (self.host, self.port, self.failure or "timed out"))
        return self

    def _run(self):
        self._loop = asyncio.new_event_loop()
        try:
            self._server = self._loop.run_until_complete(asyncio.start_server(
                self._client, self.host, self.port, limit=MAX_LINE_BYTES + 1))
            self.port = self._server.sockets[0].getsockname()[1]
        except OSError as exc:
            self.failure = "cannot listen: %s" % (exc.strerror or exc)
            self._ready.set()
            self._loop.close()
            return
        self._ready.set()
        try:
            self._loop.run_until_complete(self._server.serve_forever())
        except asyncio.CancelledError:
            pass
        finally:
            self._loop.close()

    def stop(self):
        if self._loop is not None and self._server is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._server.close)
            for task in asyncio.all_tasks(self._loop):
                self._loop.call_soon_threadsafe(task.cancel)
        if self._thread is not None:
            self._thread.join(10)
        self._store_worker.shutdown(wait=True, cancel_futures=True)

    # --- one client ----------------------------------------------------------------------
    async def _client(self, reader, writer):
        address = (writer.get_extra_info("peername") or ("?",))[0]
        over = self._caps.take(address)
        if over is not None:
            return self._refuse(writer, "max_clients" if over == "max_open" else over)
        try:
            await writer.start_tls(self.context, ssl_handshake_timeout=self.handshake_s)
            subject = writer.get_extra_info("peercert")["subject"]
            cn = dict(x[0] for x in subject).get("commonName", "")
            await self._lines(cn, reader, writer)
        except asyncio.TimeoutError:
            self.refused["timeout"] += 1
        except asyncio.LimitOverrunError:
            self.refused["line_too_long"] += 1
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, ConnectionError):
            self.refused["broken"] += 1
        finally:
            self._caps.release(address)
            writer.transport.abort()

    def _refuse(self, writer, why):
        self.refused[why] += 1
        writer.transport.abort()

    async def _lines(self, cn, reader, writer):
        loop = asyncio.get_running_loop()
        while True:
            # Idle between lines for up to idle_s; once a line starts, all of it in line_s.
            first = await asyncio.wait_for(reader.read(1), self.idle_s)
            if not first:
                return
            try:
                rest = await asyncio.wait_for(reader.readuntil(b"\n"), self.line_s)
            except asyncio.LimitOverrunError:
                await self._store(loop, self.store.add_reject, "jsonl", cn,
                                  first + await reader.read(MAX_LINE_BYTES),
                                  "line longer than %d bytes" % MAX_LINE_BYTES)
                raise
            answer = await self._store(loop, self._answer, cn, (first + rest).strip())
            writer.write(json.dumps(answer).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), self.line_s)

    async def _store(self, loop, fn, *args):
        try:
            return await loop.run_in_executor(self._store_worker, fn, *args)
        except StoreError as exc:
            # The database failed: answer nothing (the board keeps the reading) and stop.
            self.failure = "JSON-lines listener: storage failed: %s" % exc
            self.failed.set()
            raise ConnectionError("store failed") from None

    def _answer(self, cn, line):
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            message = None
        if isinstance(message, dict) and "ping" in message:
            return {"pong": 1}
        if isinstance(message, dict) and "status" in message and "seq" not in message:
            result = handle_message(self.store, "jsonl", "devices/%s/status" % cn, line)
            return {"ack": "status"} if result == "status" else {"nack": "status",
                                                                  "reason": "rejected"}
        seq = message.get("seq") if isinstance(message, dict) else None
        result = handle_message(self.store, "jsonl", "devices/%s/readings" % cn, line)
        if result == "rejected":
            return {"nack": seq if type(seq) is int else None, "reason": "rejected"}
        return {"ack": seq}
