# The main loop's states and the events that move it, as a table: the loop
# asks next_state() instead of deciding inline, so every path through an
# outage is written down here and tested, and an unplanned one raises.
#
#   OFFLINE --START--> JOINING --WIFI_UP--> SYNCING --TIME_SYNCED--> CONNECTING
#   CONNECTING --CONNECTED--> ONLINE
#   any failure or LINK_LOST --> BACKOFF --BACKOFF_DONE--> JOINING
#   FATAL or STOP, from any state but HALTED --> HALTED (final)
#   CONNECTING --NEED_PROVISION--> PROVISIONING --PROVISIONED--> CONNECTING
#   PROVISIONING --PROVISION_FAILED--> BACKOFF (denied, expired, no decision: ask again later)
#
# Backoff always resumes at JOINING: a handler finding WiFi still up (or the
# clock still set) reports WIFI_UP (TIME_SYNCED) at once, so one path serves all.
from micropython import const

# States and events are small numbers: a state is its position in _STATE_NAMES, an event its
# column in _TABLE (the names below). app.py names the ones it uses as private constants
# (`_ONLINE = const(4)`), which the compiler inlines: as public constants here they cost a
# board 22 interned names and 22 globals for numbers nothing looks up by name.
# tests/test_firmware_states.py checks app's numbers against these names.
#
# States: 0 offline, 1 joining, 2 syncing, 3 connecting, 4 online, 5 backoff, 6 halted,
#         7 provisioning (asking the base station for MQTT credentials).
_STATE_NAMES = const(("offline", "joining", "syncing", "connecting", "online", "backoff",
                      "halted", "provisioning"))
_STATES = const(8)

# Events: 0 start, 1 wifi_up, 2 wifi_failed, 3 time_synced, 4 time_failed, 5 connected,
#         6 connect_failed, 7 link_lost, 8 backoff_done, 9 fatal, 10 stop (a clean stop,
#         e.g. run.max_readings reached), 11 need_provision (no MQTT credentials yet, and a
#         base station may give them), 12 provisioned, 13 provision_failed.
# Events are named only in StateError, which only a bug raises: by number there, so their 14
# names are not kept in a board's RAM for it.
_EVENTS = const(14)

# _TABLE[state * _EVENTS + event] is the next state's digit, "." where the event is illegal
# there: one bytes constant (indexing it allocates nothing) instead of a tuple of tuples,
# which cost ~4 KB of heap on the board.
# Columns: START WIFI_UP WIFI_FAILED TIME_SYNCED TIME_FAILED CONNECTED
#          CONNECT_FAILED LINK_LOST BACKOFF_DONE FATAL STOP
#          NEED_PROVISION PROVISIONED PROVISION_FAILED
_NO = const(46)  # ord(".")
_TABLE = const(
    # OFFLINE
    b"1........66..."
    # JOINING
    b".25....5.66..."
    # SYNCING: without NTP, still try: an RTC kept across resets may be right, and if it
    # is not, TLS fails with "clock unset" and the next round syncs again.
    b"...33..5.66..."
    # CONNECTING
    b".....455.667.."
    # ONLINE
    b".......5.66..."
    # BACKOFF
    b"........166..."
    # HALTED: final; nothing leaves it.
    b".............."
    # PROVISIONING: credentials go back to CONNECTING; a refusal or silence backs off and
    # the board asks again from JOINING.
    b".......5.66.35"
)

# 2**31 ms is ~25 days: beyond any sane max_ms, and keeps the doubling bounded.
_MAX_DOUBLINGS = const(31)


class StateError(Exception):
    """An event arrived in a state that has no transition for it (the message names both)."""


def next_state(state, event):
    """Return the state that event leads to from state; raise StateError if none.

    >>> next_state(3, 5)   # connecting, connected -> online
    4
    >>> next_state(4, 3)   # online, time_synced
    Traceback (most recent call last):
    StateError: illegal transition: online on event 3
    """
    if 0 <= state < _STATES and 0 <= event < _EVENTS:
        nxt = _TABLE[state * _EVENTS + event]
        if nxt != _NO:
            return nxt - 48  # ord("0")
    raise StateError("illegal transition: %s on event %d" % (state_name(state), event))


def state_name(state):
    """Name of a state for events and logs, e.g. state_name(4) == "online"."""
    if 0 <= state < _STATES:
        return _STATE_NAMES[state]
    return "state_%d" % state


def backoff_ms(attempt, min_ms, max_ms, random):
    """Delay before retry number attempt (0 for the first): exponential, full jitter, capped.

    The delay is uniform in [0, ceiling], where ceiling = min_ms * 2**attempt capped at
    max_ms ("full jitter"). Drawing from the whole range, down to 0, is what spreads a fleet
    that lost its broker together: with a floor, every board would wait at least the floor
    and they would arrive in a wave. random is a random 32-bit integer, passed in so that
    tests choose it (on a board: int.from_bytes(os.urandom(4), "little")).

    >>> backoff_ms(0, 500, 30000, 0), backoff_ms(0, 500, 30000, 500)
    (0, 500)
    >>> backoff_ms(20, 500, 30000, 2**32 - 1) <= 30000
    True
    """
    if attempt < 0:
        attempt = 0
    if attempt > _MAX_DOUBLINGS:
        attempt = _MAX_DOUBLINGS
    ceiling = min_ms
    while attempt and ceiling < max_ms:
        ceiling *= 2
        attempt -= 1
    if ceiling > max_ms:
        ceiling = max_ms
    return random % (ceiling + 1)
