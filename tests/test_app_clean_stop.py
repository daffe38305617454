"""A run of run.max_readings ends with nothing in flight (securenode/app.py, the windowed
online loop): with a backlog larger than the limit and a window of 8 PUBLISHes, the board
sends readings only up to the limit, so none is left unacknowledged, to be sent again as a
duplicate, when it halts."""

from host_sim.servers.mosquitto import Broker, free_port

FAST = {"timeouts_ms.io": 1500, "timeouts_ms.handshake": 3000, "timeouts_ms.connect": 2000,
        "backoff.min_ms": 100, "backoff.max_ms": 400}


def test_a_backlog_beyond_max_readings_is_not_sent_before_the_stop(launch, pki):
    port = free_port()  # no broker yet: the readings pile up in the outbox
    board = launch("board-stop", port,
                   config=dict(FAST, **{"run.max_readings": 2, "mqtt.inflight": 8}))
    board.wait_for("stored", timeout=30, seq=6)
    with Broker(pki.ca.cert_pem, pki.server.chain_pem, pki.server.key_pem, port=port):
        board.wait_for("halted", timeout=60, reason="done")
    assert [e["seq"] for e in board.of("acked")] == [1, 2]
    assert sorted({e["seq"] for e in board.of("published")}) == [1, 2]
