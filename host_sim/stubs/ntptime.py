"""`ntptime` stand-in: a real SNTP query over the board's stand-in UDP socket.

The query goes to the --ntp address whatever ``ntptime.host`` says (the sim has
no DNS for pool.ntp.org); without --ntp the query vanishes and settime() fails
with OSError(ETIMEDOUT) after ``timeout`` seconds, as with an unreachable server.
"""
import errno
import struct
import types

# Seconds from 1900-01-01 (NTP era 0) to 2000-01-01 (the ports' epoch).
NTP_DELTA = 3155673600
_BLACKHOLE = ("127.0.0.1", 9)     # discard port: nothing answers


def make_module(state, socket_mod, time_mod, machine_mod):
    mod = types.ModuleType("ntptime")
    mod.host = "pool.ntp.org"
    mod.timeout = 1

    def time():
        query = bytearray(48)
        query[0] = 0x1B                 # LI 0, version 3, mode 3 (client)
        addr = state.ntp_addr or _BLACKHOLE
        s = socket_mod.socket(socket_mod.AF_INET, socket_mod.SOCK_DGRAM)
        try:
            s.settimeout(mod.timeout)
            s.sendto(query, addr)
            if state.ntp_addr is None:
                time_mod.sleep(mod.timeout)
                raise OSError(errno.ETIMEDOUT, "ETIMEDOUT")
            msg = s.recvfrom(48)[0]
        finally:
            s.close()
        val = struct.unpack("!I", msg[40:44])[0]
        return val - NTP_DELTA

    def settime():
        t = time()
        tm = time_mod.gmtime(t)
        machine_mod.RTC().datetime((tm[0], tm[1], tm[2], tm[6] + 1, tm[3], tm[4], tm[5], 0))

    mod.NTP_DELTA = NTP_DELTA
    mod.time = time
    mod.settime = settime
    return mod
