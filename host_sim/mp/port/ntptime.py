# `ntptime` for the MicroPython unix port (runs under MicroPython): a real SNTP query over
# the interpreter's own UDP socket, as micropython-lib's ntptime does. The query goes to the
# simulator's server (settings "ntp") whatever `host` says: the sim has no pool.ntp.org.
# Without a server it goes to the discard port and times out with OSError(ETIMEDOUT).
import socket
import time as _time

from micropython import const

from _simboard import settings

host = "pool.ntp.org"
timeout = 1

_MIN_NTP_S = const(3913056000)   # 2024-01-01 in NTP seconds: anything lower is era 1


def time():
    query = bytearray(48)
    query[0] = 0x1B           # LI 0, version 3, mode 3 (client)
    addr = settings["ntp"] or ("127.0.0.1", 9)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        s.sendto(query, socket.getaddrinfo(addr[0], addr[1])[0][-1])
        msg = s.recv(48)
    finally:
        s.close()
    val = int.from_bytes(msg[40:44], "big")   # the transmit timestamp's seconds
    if val < _MIN_NTP_S:
        val += 0x100000000
    # Seconds in the port's own epoch (1970 here, 2000 on esp32/esp8266).
    return val - (2208988800 if _time.gmtime(0)[0] == 1970 else 3155673600)


def settime():
    t = time()
    import machine
    g = _time.gmtime(t)
    machine.RTC().datetime((g[0], g[1], g[2], g[6] + 1, g[3], g[4], g[5], 0))
