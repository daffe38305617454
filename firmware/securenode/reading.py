# A reading's wire form: one compact JSON object, keys in a fixed order, built
# by hand so that every port produces the same bytes for the same values.
from micropython import const

_MAX_ID_CHARS = const(64)
_ID_CHARS = const("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
# voltage and freq are written as sign, whole part and fraction (%s%d.%0Nd): see _fixed().
_JSON = const('{"id":"%s","seq":%d,"timestamp":%d,"status":%d,"voltage":%s%d.%01d,'
              '"freq":%s%d.%02d}')


class ReadingError(Exception):
    """A value cannot be put in a reading (wrong type, out of range, not finite)."""


def encode(device_id, seq, timestamp, status, voltage, freq):
    """Return the reading as JSON bytes, keys always in this order.

    timestamp is unix seconds (int). voltage has 1 decimal: 0.1 V is already
    finer than the measurement's 1% accuracy. freq has 2 decimals: grid
    frequency moves by hundredths of a hertz, and that is what a reader of
    the data looks for.

    >>> encode("board-1", 7, 1700000000, 0, 229.96, 50.004)
    b'{"id":"board-1","seq":7,"timestamp":1700000000,"status":0,"voltage":230.0,"freq":50.00}'
    """
    _check_id(device_id)
    _check_int("seq", seq)
    _check_int("timestamp", timestamp)
    _check_int("status", status)
    v = _fixed("voltage", voltage, 10)
    f = _fixed("freq", freq, 100)
    return (_JSON % (device_id, seq, timestamp, status, v[0], v[1], v[2],
                     f[0], f[1], f[2])).encode()


def topic(device_id):
    """Return the MQTT topic a device publishes its readings to.

    >>> topic("board-1")
    b'devices/board-1/readings'
    """
    _check_id(device_id)
    return ("devices/%s/readings" % device_id).encode()


def status_topic(device_id):
    """Return the topic of the device's retained status (online/offline, outbox counters).

    >>> status_topic("board-1")
    b'devices/board-1/status'
    """
    _check_id(device_id)
    return ("devices/%s/status" % device_id).encode()


def _fixed(name, value, scale):
    # (sign, whole part, fraction in 1/scale) of value rounded to 1/scale, for _JSON.
    # Rounded here, in integers, instead of "%.2f": MicroPython's float
    # formatting is not correctly rounded ("%.2f" % 50.005 gives 50.01 there,
    # 50.00 on CPython) and boards' single-precision floats print artefacts.
    if type(value) is not float and type(value) is not int:
        raise ReadingError("%s must be a number, got %r" % (name, value))
    # NaN differs from itself; inf - inf is NaN. JSON has neither.
    if value != value or value - value != 0:
        raise ReadingError("%s must be finite, got %r" % (name, value))
    sign = ""
    if value < 0:
        sign = "-"
        value = -value
    q = int(value * scale + 0.5)
    if q == 0:
        sign = ""
    return sign, q // scale, q % scale


def _check_int(name, value):
    # An int (True is not a status) counted from 0.
    if type(value) is not int or value < 0:
        raise ReadingError("%s must be an integer >= 0, got %r" % (name, value))


def _check_id(device_id):
    # Validated by config too; checked again because it is pasted into JSON and
    # a topic unescaped, so a quote or a slash must never get this far.
    if type(device_id) is not str or not 1 <= len(device_id) <= _MAX_ID_CHARS:
        raise ReadingError("device_id must be 1..%d characters, got %r"
                           % (_MAX_ID_CHARS, device_id))
    for c in device_id:
        if c not in _ID_CHARS:
            raise ReadingError("device_id must be A-Z a-z 0-9 _ - only, got %r" % device_id)
