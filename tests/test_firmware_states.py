"""securenode/states.py: every (state, event) pair and the backoff delays, on both ports."""

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent / "firmware_shims"))
from firmware_harness import FIRMWARE, firmware_files, run_both  # noqa: E402

# States and events by number (a state's number is its place here, an event's its column
# in states.py's table).
STATES = ["offline", "joining", "syncing", "connecting", "online", "backoff", "halted",
          "provisioning"]
EVENTS = ["start", "wifi_up", "wifi_failed", "time_synced", "time_failed", "connected",
          "connect_failed", "link_lost", "backoff_done", "fatal", "stop",
          "need_provision", "provisioned", "provision_failed"]

# The legal transitions, written out independently of the module's table.
LEGAL = {
    ("offline", "start"): "joining",
    ("joining", "wifi_up"): "syncing",
    ("joining", "wifi_failed"): "backoff",
    ("joining", "link_lost"): "backoff",
    ("syncing", "time_synced"): "connecting",
    ("syncing", "time_failed"): "connecting",
    ("syncing", "link_lost"): "backoff",
    ("connecting", "connected"): "online",
    ("connecting", "connect_failed"): "backoff",
    ("connecting", "link_lost"): "backoff",
    ("online", "link_lost"): "backoff",
    ("backoff", "backoff_done"): "joining",
    # Provisioning: no MQTT credentials -> ask the base station, then connect or back off.
    ("connecting", "need_provision"): "provisioning",
    ("provisioning", "provisioned"): "connecting",
    ("provisioning", "provision_failed"): "backoff",
    ("provisioning", "link_lost"): "backoff",
}
for _state in [s for s in STATES if s != "halted"]:
    LEGAL[(_state, "fatal")] = "halted"
    LEGAL[(_state, "stop")] = "halted"

# (attempt, min_ms, max_ms, random) -> delay: uniform in [0, min(max_ms, min_ms * 2**attempt)]
BACKOFF = [
    ((0, 500, 30000, 0), 0),
    ((0, 500, 30000, 500), 500),
    ((0, 500, 30000, 501), 0),
    ((1, 500, 30000, 1000), 1000),
    ((1, 500, 30000, 1001), 0),
    ((3, 500, 30000, 4000), 4000),
    ((5, 500, 30000, 2 ** 32 - 1), (2 ** 32 - 1) % 16001),
    ((40, 500, 30000, 30000), 30000),
    ((1000, 500, 30000, 123456789), 123456789 % 30001),
    ((-3, 500, 30000, 7), 7),
    ((4, 1000, 1000, 999999), 999999 % 1001),
]

VECTORS = r'''
import json
from securenode import states as s

names = [s.state_name(i) for i in range(8)]
table = {}
for st in range(8):
    for ev in range(14):
        try:
            table["%d/%d" % (st, ev)] = s.state_name(s.next_state(st, ev))
        except s.StateError as e:
            table["%d/%d" % (st, ev)] = "error: %s" % e
out_of_range = []
for st, ev in ((8, 0), (-1, 0), (0, 14), (0, -1)):
    try:
        s.next_state(st, ev)
        out_of_range.append("no error")
    except s.StateError as e:
        out_of_range.append(str(e))
delays = [s.backoff_ms(*args) for args in json.loads(BACKOFF)]
# Every delay for attempts 0..12 stays in [0, min(max_ms, min_ms * 2**attempt)].
sweep = []
lcg = 1
for attempt in range(13):
    lo, hi = 10**9, 0
    for _ in range(200):
        lcg = (lcg * 1664525 + 1013904223) & 0xFFFFFFFF
        d = s.backoff_ms(attempt, 250, 20000, lcg)
        lo = min(lo, d)
        hi = max(hi, d)
    sweep.append([lo, hi])
print(json.dumps({"names": names, "table": table,
                  "out_of_range": out_of_range, "delays": delays, "sweep": sweep}))
'''


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    code = "BACKOFF = %r\n" % json.dumps([list(a) for a, _ in BACKOFF]) + VECTORS
    return run_both(firmware_files("states"), code, tmp_path_factory.mktemp("flash"))


def test_cpython_and_micropython_agree(results):
    assert results[0] == results[1]


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_state_names_in_order(results, port):
    assert results[port]["names"] == STATES


def test_app_numbers_states_and_events_as_the_table_does():
    # app.py names the states and events as private constants (inlined on a board, so
    # nothing can import them): each must be the number the table gives that name.
    source = (FIRMWARE / "securenode" / "app.py").read_text()
    consts = dict((name.lower(), int(value)) for name, value in
                  re.findall(r"^_([A-Z_]+) = const\((\d+)\)", source, re.M))
    assert {n: consts.get(n) for n in STATES} == {n: i for i, n in enumerate(STATES)}
    assert {n: consts.get(n) for n in EVENTS} == {n: i for i, n in enumerate(EVENTS)}


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_only_the_planned_transitions_are_legal(results, port):
    table = results[port]["table"]
    for si, state in enumerate(STATES):
        for ei, event in enumerate(EVENTS):
            got = table["%d/%d" % (si, ei)]
            if (state, event) in LEGAL:
                assert got == LEGAL[(state, event)], (state, event)
            else:
                assert got == "error: illegal transition: %s on event %d" % (state, ei), (
                    state, event)


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_halted_is_final(results, port):
    table = results[port]["table"]
    assert all(table["6/%d" % e].startswith("error:") for e in range(len(EVENTS)))


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_unknown_numbers_are_state_errors(results, port):
    assert results[port]["out_of_range"] == [
        "illegal transition: state_8 on event 0", "illegal transition: state_-1 on event 0",
        "illegal transition: offline on event 14", "illegal transition: offline on event -1"]


@pytest.mark.parametrize("port", [0, 1], ids=["cpython", "micropython"])
def test_backoff_is_exponential_full_jitter_and_capped(results, port):
    assert results[port]["delays"] == [want for _, want in BACKOFF]
    for attempt, (lo, hi) in enumerate(results[port]["sweep"]):
        ceiling = min(20000, 250 * 2 ** attempt)
        assert 0 <= lo and hi <= ceiling
        # Full jitter: the draws spread over the whole range, down to near zero.
        assert lo <= 0.1 * ceiling and hi >= 0.9 * ceiling
