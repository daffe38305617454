"""The board's wall clock, and an honest answer to "is the time known?".

A board boots at 2000-01-01 and mbedTLS judges certificate dates by that clock, so TLS must
wait for NTP (ntp.py sets it). Anything earlier than this firmware's build date counts as
unset.

Example::

    from securenode import clock
    clock.is_set()      # -> False until NTP answered (or an RTC kept the time)
    clock.unix_time()   # -> 1795600000
"""

import time

from micropython import const

# When this firmware was built (unix seconds, UTC): a board clock earlier than this has not
# been set, so certificates cannot be judged by it and TLS waits for NTP instead of guessing.
# Private: inlined where used, where a module of its own cost a board a module and 3 names.
_BUILD_UNIX_S = const(1795564800)  # 2026-11-25T00:00:00Z
_UNIX_AT_2000 = const(946684800)


def unix_time():
    """Whole unix seconds, an int on every port.

    The unix port's time.time() is a float (boards return an int); a reading's timestamp
    and the certificate-date checks want whole seconds, so the fraction is dropped here.
    """
    # Ports differ: most count from 2000-01-01, some from 1970. Ask, don't assume.
    return int(time.time()) + (0 if time.gmtime(0)[0] == 1970 else _UNIX_AT_2000)


def is_set():
    return unix_time() >= _BUILD_UNIX_S
