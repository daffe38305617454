"""The words of the MQTT client's errors: loaded only when one is raised, then dropped.

mqtt_codec and mqtt_link raise with a small code and the values (a few bytes of bytecode
each); the sentences live here, so a board that never meets a misbehaving broker keeps none
of them resident (issue 10: each message is a str object of the GC heap while its module
is loaded). ``text`` turns (code, values...) into the sentence; codes 1..17 take the packet's
first byte as their first value and name the packet from it. ``link_error`` makes mqtt_link's
LinkError (kind and words) from its reason code.

Example::

    >>> text((13, 0x30, 65, 64))
    'PUBLISH (first byte 0x30) announces 65 bytes, over the bound of 64'
"""

from micropython import const

# The tables are single strings, one entry per line, read with _line(): in the image (or the
# .mpy) each is one str, where a tuple of sentences was ~50 objects and 16 packet names
# built in the heap at import. This module is imported when a link fails, which is when the
# heap is fullest: the first broker kill at a 48K ROMFS heap found no room for the tuples.
_NAMES = const("reserved 0\nCONNECT\nCONNACK\nPUBLISH\nPUBACK\nPUBREC\nPUBREL\nPUBCOMP\n"
               "SUBSCRIBE\nSUBACK\nUNSUBSCRIBE\nUNSUBACK\nPINGREQ\nPINGRESP\nDISCONNECT\n"
               "reserved 15")

# What _E_STR names, by mqtt_codec's/mqtt_connect's _F_* code.
_FIELDS = const("topic\nwill topic\nwill payload\nuser name\npassword\nclient id")

# CONNACK's refusals by return code 1..5 (MQTT 3.1.1 3.2.2.3); line 0 unused.
_REFUSALS = const("-\nunacceptable protocol version\nclient identifier rejected\n"
                  "server unavailable\nbad user name or password\nnot authorised")

# Line = code (mqtt_codec's _E_* constants). "%N" stands for the packet's name and first byte.
_TEXTS = const(
    "-\n"
    "%N: remaining length longer than 4 bytes\n"                                      # 1
    "malformed %N: QoS 3\n"
    "%N with QoS 2: this client subscribes to nothing and takes QoS 0/1 only\n"
    "malformed %N: DUP on QoS 0\n"
    "malformed %N: fixed-header flags must be 0\n"                                    # 5
    "unexpected %N: this client sends QoS 0/1 only\n"
    "unexpected %N: this client subscribes to nothing\n"
    "%N: not an MQTT packet\n"
    "unexpected %N: only a client sends it\n"
    "malformed %N: remaining length %d, must be 2\n"                                  # 10
    "malformed %N: remaining length %d, must be 0\n"
    "malformed %N: remaining length %d is too short\n"
    "%N announces %d bytes, over the bound of %d\n"
    "malformed CONNACK: reserved flags 0x%02x\n"
    "malformed PUBACK: packet id 0\n"                                                 # 15
    "malformed PUBLISH: topic of %d bytes in a packet of %d\n"
    "malformed PUBLISH: QoS 1 with packet id 0\n"
    "%d PUBLISHes already await PUBACK\n"
    "PUBACK for packet id %d, which this session never sent\n"
    "remaining length %d outside 0..268435455\n"                                      # 20
    "%s needs %d bytes, the buffer has %d\n"
    "%s is %d bytes, more than MQTT's 65535\n"
    "keepalive %d s outside 0..65535\n"
    "a password needs a user name (MQTT 3.1.1 3.1.2.9)\n"
    "-\n"  # 25: no longer raised (the will's QoS is always 1)
    "PUBLISH QoS %r: this client sends 0 or 1\n"
    "packet id %r outside 1..65535\n"
    "DUP on a QoS 0 PUBLISH (MQTT 3.1.1 3.3.1.1)\n"
    "topic %r: empty or a wildcard (MQTT 3.1.1 3.3.2.1)")
_FIRST_NAMED = const(13)  # codes up to here name the packet from its first byte (except 14..17)
_E_FITS = const(21)  # names the packet from its type
_E_STR = const(22)   # names the field from its _F_* code


def _line(table, n):
    """Line n (from 0) of a table: one slice, no list of every line.

    >>> _line("a\\nbc\\nd", 1)
    'bc'
    """
    start = 0
    for _ in range(n):
        start = table.index("\n", start) + 1
    end = table.find("\n", start)
    return table[start:] if end < 0 else table[start:end]


def packet_name(kind):
    """The name of an MQTT control packet type (0..15).

    >>> packet_name(9)
    'SUBACK'
    """
    return _line(_NAMES, kind & 15)


def text(args):
    """The sentence for an error raised as (code, values...)."""
    code = args[0]
    values = args[1:]
    fmt = _line(_TEXTS, code)
    if code <= _FIRST_NAMED:
        first = values[0]
        fmt = fmt.replace("%N", "%s (first byte 0x%02x)" % (packet_name(first >> 4), first))
        values = values[1:]
    elif code == _E_FITS:
        values = (packet_name(values[0]),) + values[1:]  # the packet type
    elif code == _E_STR:
        values = (_line(_FIELDS, values[0]),) + values[1:]
    return fmt % values if values else fmt


# mqtt_link's reasons (its _R_* constants) and the packet types a step waits for.
_R_TIMEOUT = const(1)
_R_IO = const(2)
_R_REFUSED = const(3)
_R_BEFORE_CONNACK = const(4)
_R_EOF = const(5)
_R_NO_PINGRESP = const(6)
_R_QUIET = const(7)
_R_FEED = const(8)
_R_PUBACK = const(9)
_R_UNEXPECTED = const(10)
_CONNACK = const(2)


def link_error(link, reason, waiting_for, value):
    """mqtt_link's LinkError for ``reason`` (an _R_* code) while it waited for the packet
    type ``waiting_for`` (0: any packet); ``value`` is what went wrong underneath (an
    exception, a packet type, a CONNACK code, a count of milliseconds), by reason."""
    # Imported here: the codec's errors (``text``) need neither, nor the sockets net imports.
    from securenode import net
    from securenode.link_error import LinkError

    if reason == _R_IO and value is not None and net.is_timeout(value):
        reason = _R_TIMEOUT  # a read or write that timed out: the answer did not come
    return LinkError(*_link_words(link.peer, link.io_ms, reason, waiting_for, value))


def _link_words(peer, io_ms, reason, waiting_for, value):
    waited = packet_name(waiting_for) if waiting_for else "a packet"
    if reason == _R_TIMEOUT:
        if waiting_for == _CONNACK:
            return "connack_timeout", (
                "%s completed TLS but sent no CONNACK within %d ms (timeouts_ms.io)"
                % (peer, io_ms))
        return "ack_timeout", "no %s from %s within %d ms (timeouts_ms.io)" % (
            waited, peer, io_ms)
    if reason == _R_IO:
        if waiting_for == _CONNACK:
            if value is None:
                return "closed", ("%s closed the connection before CONNACK (is this device's "
                                  "certificate accepted there?)" % peer)
            return "closed", ("%s: connection failed before CONNACK (%s); is this device's "
                              "certificate accepted there?" % (peer, value))
        if value is None:
            return "link_lost", "%s closed the connection while we waited for %s" % (
                peer, waited)
        return "link_lost", "connection to %s lost while waiting for %s (%s)" % (
            peer, waited, value)
    if reason == _R_REFUSED:
        return "connack_refused", "CONNACK refused: %s (%d) by %s" % (
            _line(_REFUSALS, value) if 1 <= value <= 5 else "unknown reason", value, peer)
    if reason == _R_EOF:
        return "link_lost", "%s closed the connection" % peer
    if reason == _R_NO_PINGRESP:
        return "link_lost", ("no PINGRESP from %s within %d ms (timeouts_ms.io): half-open "
                             "connection" % (peer, io_ms))
    if reason == _R_QUIET:
        return "link_lost", ("nothing from %s for %d ms (> 1.5 x keepalive): half-open "
                             "connection" % (peer, value))
    if reason == _R_BEFORE_CONNACK:
        return "protocol", "%s sent %s before CONNACK" % (peer, packet_name(value))
    if reason == _R_UNEXPECTED:
        return "protocol", "%s sent %s while we waited for %s" % (
            peer, packet_name(value), waited)
    if reason == _R_PUBACK:
        return "protocol", "%s: %s" % (peer, value)
    # _R_FEED: the decoder's ProtocolError
    return "protocol", "%s while we waited for %s from %s" % (value, waited, peer)
