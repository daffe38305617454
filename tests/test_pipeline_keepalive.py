"""An idle MQTT link costs one PINGREQ per keepalive (MQTT 3.1.1 3.1.2.10 asks for a packet
within each keepalive), not one per half keepalive; a link that stops answering is still
given up within 1.5 x keepalive (when the broker itself would drop the session)."""

import pytest

from hostile_broker import PINGREQ, PUBLISH, HostileBroker
from mp_fixtures import mp_launch  # noqa: F401  (fixture: the real MicroPython runtime)

KEEPALIVE_S = 2
IDLE = {"mqtt.keepalive_s": KEEPALIVE_S, "sample.interval_ms": 600000,
        "timeouts_ms.io": 5000, "backoff.min_ms": 100, "backoff.max_ms": 200}


def starter(runtime, launch, mp_launch):
    return mp_launch if runtime == "micropython" else launch


@pytest.mark.parametrize("runtime", ["cpython", "micropython"])
def test_idle_link_sends_one_pingreq_per_keepalive(runtime, launch, mp_launch, pki):
    with HostileBroker(pki, "normal") as broker:
        board = starter(runtime, launch, mp_launch)("ka-idle-" + runtime, broker.port,
                                                    config=IDLE)
        board.wait_for("acked", timeout=30, seq=1)
        conn = broker.connections[0]
        import time
        deadline = time.monotonic() + 30
        while len(conn.of(PINGREQ)) < 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        board.stop()
    last_publish = conn.of(PUBLISH)[-1][0]
    pings = [p[0] for p in conn.of(PINGREQ)]
    assert len(pings) >= 4, pings
    gaps = [b - a for a, b in zip([last_publish] + pings, pings)]
    # Within 10% of one keepalive each (a board and this host's scheduling included).
    assert all(0.9 * KEEPALIVE_S <= g <= 1.1 * KEEPALIVE_S for g in gaps), gaps


@pytest.mark.parametrize("runtime", ["cpython", "micropython"])
def test_unanswered_keepalive_is_a_dead_link_within_one_and_a_half_keepalives(
        runtime, launch, mp_launch, pki):
    with HostileBroker(pki, lambda i: "no_pingresp" if i == 0 else "normal") as broker:
        board = starter(runtime, launch, mp_launch)("ka-dead-" + runtime, broker.port,
                                                    config=IDLE)
        heard = board.wait_for("acked", timeout=30, seq=1)
        error = board.wait_for("error", timeout=30, kind="link_lost")
        board.stop()
    assert "half-open" in error["detail"]
    conn = broker.connections[0]
    assert conn.of(PINGREQ), "the board never asked"
    # The last thing heard from the broker was the reading's PUBACK (the status's came
    # before it): silence for more than 1.5 x keepalive ends the link, not much later.
    quiet_ms = error["t_ms"] - heard["t_ms"]
    assert 1.5 * KEEPALIVE_S * 1000 <= quiet_ms + 50 <= 1.5 * KEEPALIVE_S * 1000 + 400, quiet_ms
