"""The bound on guessing the operator's password.

At most ``LOGIN_CONCURRENCY`` scrypt checks at once (16 MiB each), on threads of their own;
one attempt in flight per address; after each wrong password that address waits 1, 2,
4 ... 60 s before its next guess is even checked. 200 concurrent wrong logins were 3.1 GB
and 8-12 guesses/s without this.
"""

import concurrent.futures
import threading
import time

LOGIN_CONCURRENCY = 2        # scrypt n=2**14, r=8 takes 16 MiB per check
LOGIN_DELAY_S = 1.0          # after a wrong password; doubles per further failure
LOGIN_MAX_DELAY_S = 60.0
MAX_TRACKED_SOURCES = 4096   # addresses the throttle remembers


class LoginGuard:
    """Bounds password guessing: scrypt concurrency, one try in flight per address, and a
    doubling wait after each wrong password from that address.

        guard = LoginGuard(concurrency=2, delay_s=1.0)
        wait_s = guard.begin("192.0.2.9")     # None: go ahead; else refuse, retry after wait_s
        ... check the password ...
        guard.end("192.0.2.9", ok=False)
    """

    def __init__(self, concurrency=LOGIN_CONCURRENCY, delay_s=LOGIN_DELAY_S,
                 max_delay_s=LOGIN_MAX_DELAY_S, max_sources=MAX_TRACKED_SOURCES,
                 clock=time.monotonic):
        # Checks run on their own few threads, not on the connection's: glibc keeps a
        # freed 16 MiB scrypt block in the arena of the thread that used it, so checks on
        # 64 worker threads would keep 1 GB resident; on two threads, 32 MiB.
        self.checker = concurrent.futures.ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="basestation-scrypt")
        self.delay_s, self.max_delay_s = delay_s, max_delay_s
        self.max_sources = max_sources
        self.clock = clock
        self._lock = threading.Lock()
        self._sources = {}   # ip -> [in_flight, failures, next_allowed]

    def begin(self, ip):
        now = self.clock()
        with self._lock:
            entry = self._sources.get(ip)
            if entry is None:
                if len(self._sources) >= self.max_sources:
                    self._prune(now)
                if len(self._sources) >= self.max_sources:
                    return self.delay_s
                entry = self._sources[ip] = [False, 0, now]
            if entry[0]:
                return self.delay_s
            if now < entry[2]:
                return entry[2] - now
            entry[0] = True
            return None

    def end(self, ip, ok, checked=True):
        """``checked`` False: the password was never compared (busy), so no penalty."""
        now = self.clock()
        with self._lock:
            entry = self._sources.get(ip)
            if entry is None:
                return
            if ok:
                del self._sources[ip]
                return
            entry[0] = False
            if not checked:
                return
            entry[1] += 1
            entry[2] = now + min(self.delay_s * 2 ** min(entry[1] - 1, 16), self.max_delay_s)

    def check(self, fn, *args, timeout_s=5.0):
        """fn(*args) on a checker thread; TimeoutError if the checks are busy that long."""
        future = self.checker.submit(fn, *args)
        try:
            return future.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError("password checks busy") from None

    def close(self):
        self.checker.shutdown(wait=False, cancel_futures=True)

    def _prune(self, now):
        # Forget addresses whose wait is long over; a busy table refuses newcomers instead.
        for ip in [ip for ip, e in self._sources.items()
                   if not e[0] and e[2] + self.max_delay_s < now]:
            del self._sources[ip]
