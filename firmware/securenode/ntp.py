"""Set the board's clock over NTP: loaded only while the loop syncs, then given back.

A board boots at 2000-01-01 and mbedTLS judges certificate dates by that clock, so TLS must
wait for NTP (clock.py says whether the time is known). The loop syncs once a boot (again
only after a failed sync), like wifi.py joins: this module is not kept between.

Example::

    from securenode import ntp
    ntp.sync("pool.ntp.org", timeout_ms=3000)   # -> 1795600000; raises ClockError
"""

from securenode import clock


class ClockError(Exception):
    pass


def sync(host, timeout_ms):
    """Set the RTC from ``host`` over SNTP; return the new unix time."""
    import ntptime

    ntptime.host = host
    ntptime.timeout = max(1, timeout_ms // 1000)
    try:
        ntptime.settime()
    except OSError as exc:
        raise ClockError("NTP server %s did not answer within %d ms (%s)"
                         % (host, timeout_ms, exc))
    if not clock.is_set():
        raise ClockError("NTP server %s gave a time before this firmware was built" % host)
    return clock.unix_time()
