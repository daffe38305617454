"""Boards running the real firmware with transport "wss" against tools/ingest.py (the
`websockets` library, TLS, per-device bearer tokens): readings acked one by one, tokens
refused before the upgrade and bound to their device, commands applied and acknowledged,
and a rogue CA that never sees the token."""

import json
import subprocess
import sys
import time

import pytest

from host_sim.servers.tls_recorder import RecordingTlsServer
from tools.ingest import IngestServer, load_tokens

TOKENS = {"board-ws1": "ws1-" + "q7Rz" * 8, "board-ws2": "ws2-" + "M3kP" * 8,
          "board-wsbad": "bad-" + "x9Yv" * 8, "board-wscmd": "cmd-" + "L0oN" * 8,
          "board-wsrogue": "rog-" + "H4sT" * 8, "board-wsidle": "idl-" + "P2wE" * 8}
FAST = {"timeouts_ms.io": 1500, "timeouts_ms.handshake": 3000, "timeouts_ms.connect": 2000,
        "backoff.min_ms": 100, "backoff.max_ms": 400}


def wss(port, token, **extra):
    section = {"host": "localhost", "port": port, "token": token}
    section.update(extra)
    return {"transport": "wss", "wss": section}


@pytest.fixture
def ingest(pki):
    with IngestServer(TOKENS, pki.server.chain_pem, pki.server.key_pem) as server:
        yield server


def assert_no_token_in(board):
    text = json.dumps(board.events)
    for token in TOKENS.values():
        assert token not in text


def test_every_reading_is_acked_by_the_ingest_endpoint(launch, ingest):
    board = launch("board-ws1", 1, config=dict(wss(ingest.port, TOKENS["board-ws1"]),
                                                 **{"run.max_readings": 5}))
    board.wait_for("halted", timeout=60, reason="done")
    sent = [json.loads(e["payload"]) for e in board.of("published")]
    assert [e["seq"] for e in board.of("acked")] == [1, 2, 3, 4, 5]
    assert ingest.readings["board-ws1"] == sent
    connected = board.wait_for("wss_connected")
    assert connected["path"] == "/ingest/board-ws1"
    assert board.errors() == []
    assert_no_token_in(board)


def test_wrong_token_is_refused_with_401_before_the_upgrade(launch, ingest):
    board = launch("board-wsbad", 1, config=dict(FAST, **wss(ingest.port, "not-" + "the-tok" * 5)))
    error = board.wait_for("error", timeout=30, kind="ws_refused")
    assert "401" in error["detail"]
    board.wait_for("backoff", timeout=10)
    board.stop()
    assert ("board-wsbad", "wrong token") in ingest.refused
    assert "board-wsbad" not in ingest.readings
    assert not board.of("acked")


def test_one_device_cannot_post_with_another_devices_token(launch, ingest):
    # board-ws2 presents board-ws1's (valid) token: the endpoint binds tokens to the path's id.
    board = launch("board-ws2", 1, config=dict(FAST, **wss(ingest.port, TOKENS["board-ws1"])))
    board.wait_for("error", timeout=30, kind="ws_refused")
    board.stop()
    assert ("board-ws2", "wrong token") in ingest.refused
    assert ingest.readings == {}
    assert_no_token_in(board)


def test_set_interval_command_is_applied_and_acknowledged(launch, ingest):
    board = launch("board-wscmd", 1, config=dict(wss(ingest.port, TOKENS["board-wscmd"]),
                                                 **{"sample.interval_ms": 200}))
    board.wait_for("acked", timeout=30, seq=2)
    command_id = ingest.send_command("board-wscmd", {"cmd": "set_interval", "interval_ms": 900})
    applied = board.wait_for("command", timeout=10, cmd="set_interval", ok=True)
    assert applied["interval_ms"] == 900
    deadline = time.monotonic() + 10
    while not ingest.command_acks.get("board-wscmd") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ingest.command_acks["board-wscmd"] == [{"cmd_ack": command_id, "ok": True}]
    last = max(e["seq"] for e in board.of("published"))
    board.wait_for("acked", timeout=30, seq=last + 4)
    # The reading already scheduled when the command came keeps the old spacing; after it,
    # readings go out 900 ms apart (they were 200 ms).
    times = [e["t_ms"] for e in board.of("published") if e["t_ms"] > applied["t_ms"] + 300]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(gaps) >= 2 and min(gaps) >= 700, (gaps, board.events[-30:])


def test_command_between_readings_is_applied_without_waiting_for_the_next_one(launch, ingest):
    # Readings 20 s apart: the command must be handled while the board idles, not at the
    # next reading's ack.
    board = launch("board-wsidle", 1, config=dict(wss(ingest.port, TOKENS["board-wsidle"]),
                                                  **{"sample.interval_ms": 20000}))
    acked = board.wait_for("acked", timeout=30, seq=1)
    ingest.send_command("board-wsidle", {"cmd": "set_interval", "interval_ms": 1000})
    applied = board.wait_for("command", timeout=5, cmd="set_interval", ok=True)
    assert applied["t_ms"] - acked["t_ms"] < 20000
    assert [e["seq"] for e in board.of("published")] == [1]


def test_invalid_command_is_refused_in_its_ack(launch, ingest):
    board = launch("board-wscmd", 1, config=wss(ingest.port, TOKENS["board-wscmd"]))
    board.wait_for("acked", timeout=30, seq=1)
    command_id = ingest.send_command("board-wscmd", {"cmd": "set_interval", "interval_ms": 5})
    board.wait_for("command", timeout=10, cmd="set_interval", ok=False)
    deadline = time.monotonic() + 10
    while not ingest.command_acks.get("board-wscmd") and time.monotonic() < deadline:
        time.sleep(0.05)
    ack = ingest.command_acks["board-wscmd"][0]
    assert ack["cmd_ack"] == command_id and ack["ok"] is False
    assert "interval_ms must be an integer" in ack["detail"]


def test_rogue_ca_never_sees_the_token(launch, pki):
    with RecordingTlsServer(pki.rogue.chain_pem, pki.rogue.key_pem) as rogue:
        board = launch("board-wsrogue", 1,
                       config=dict(FAST, **wss(rogue.port, TOKENS["board-wsrogue"])))
        board.wait_for("error", timeout=30, kind="unknown_ca")
        board.wait_for("backoff", timeout=10)
        board.stop()
        assert rogue.received == b"", "the rogue server received application data"
        assert not board.of("wss_connected")
        assert_no_token_in(board)


def test_wss_config_without_a_token_is_named_and_halts(launch):
    board = launch("board-ws1", 1, config={"transport": "wss", "wss": {"host": "localhost"}})
    error = board.wait_for("error", timeout=20, kind="config")
    assert error["detail"] == "config.json: wss.token is required for transport wss"
    board.wait_for("halted", timeout=10, reason="config")


def test_tokens_file_loads_from_json_and_csv(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps(TOKENS))
    (tmp_path / "t.csv").write_text("# device,token\n" + "".join(
        "%s,%s\n" % item for item in TOKENS.items()))
    assert load_tokens(tmp_path / "t.json") == TOKENS == load_tokens(tmp_path / "t.csv")


def test_ingest_cli_reports_a_bad_tokens_file_without_a_traceback(tmp_path, pki):
    (tmp_path / "t.json").write_text('{"board 1": "short"}')
    proc = subprocess.run([sys.executable, "tools/ingest.py", "serve", "--tokens",
                           str(tmp_path / "t.json"), "--cert", str(pki.server.chain_pem),
                           "--key", str(pki.server.key_pem)], capture_output=True, text=True,
                          timeout=30, cwd=str(__import__("conftest").ROOT))
    assert proc.returncode == 2
    assert proc.stderr.startswith("ingest: ") and "Traceback" not in proc.stderr


def _client(ingest, pki, device, token):
    import ssl

    from websockets.sync.client import connect
    context = ssl.create_default_context(cafile=str(pki.ca.cert_pem))
    headers = {"Authorization": "Bearer " + token} if token else {}
    return connect("wss://localhost:%d/ingest/%s" % (ingest.port, device), ssl=context,
                   additional_headers=headers, open_timeout=5)


def test_reading_that_names_another_device_closes_with_1008(ingest, pki):
    from websockets.exceptions import ConnectionClosed
    with _client(ingest, pki, "board-ws1", TOKENS["board-ws1"]) as ws:
        ws.send(json.dumps({"id": "board-ws2", "seq": 1}))
        with pytest.raises(ConnectionClosed) as info:
            ws.recv(timeout=5)
    assert info.value.rcvd.code == 1008
    assert ingest.readings == {}


@pytest.mark.parametrize("token", [None, "x" * 40])
def test_endpoint_answers_401_with_a_bearer_challenge(ingest, pki, token):
    from websockets.exceptions import InvalidStatus
    with pytest.raises(InvalidStatus) as info:
        _client(ingest, pki, "board-ws1", token)
    response = info.value.response
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer ")
    assert ingest.readings == {} and ingest.connections == 0
