"""The unmodified firmware on the real MicroPython unix port delivers readings end to end.

Real socket, real ssl on Mbed TLS, the flash a LittleFS2 image: what CI proves here is what
the interpreter a board runs does, not what CPython stand-ins do.
"""
import json
import secrets

import pytest

from mp_fixtures import debug_lines, jsonl_server, mp_launch  # noqa: F401  (fixtures)


def test_jsonl_readings_reach_the_collector_listener(mp_launch, jsonl_server):
    board = mp_launch("mp-jsonl", 1, config={
        "transport": "jsonl", "jsonl": {"host": "localhost", "port": jsonl_server.port},
        "run.max_readings": 5})
    board.wait_for("halted", timeout=60, reason="done")
    assert [e["seq"] for e in board.of("acked")] == [1, 2, 3, 4, 5]
    got = jsonl_server.store.readings["mp-jsonl"]
    assert sorted(got) == [1, 2, 3, 4, 5]
    published = {e["seq"]: json.loads(e["payload"]) for e in board.of("published")}
    assert all(got[seq] == published[seq] for seq in got)
    assert board.proc.wait(10) == 0
    boot = [d for d in debug_lines(board.flash) if d["kind"] == "boot"][0]
    assert (boot["runtime"], boot["board"], boot["heap_bytes"]) == (
        "micropython", "esp32-spiram", 2 * 1024 * 1024)


@pytest.mark.parametrize("bytecode", ["py", "mpy"])
def test_wss_readings_reach_the_ingest_endpoint(mp_launch, pki, bytecode):
    from tools.ingest import IngestServer

    token = secrets.token_urlsafe(24)
    with IngestServer({"mp-wss": token}, pki.server.chain_pem, pki.server.key_pem) as ingest:
        board = mp_launch("mp-wss", 1, bytecode=bytecode, config={
            "transport": "wss", "wss": {"host": "localhost", "port": ingest.port,
                                        "token": token},
            "run.max_readings": 4})
        board.wait_for("halted", timeout=60, reason="done")
        assert [r["seq"] for r in ingest.readings["mp-wss"]] == [1, 2, 3, 4]
    assert board.proc.wait(10) == 0
    flash = [d for d in debug_lines(board.flash) if d["kind"] == "flash"][0]
    assert flash["bytecode"] == bytecode and (flash["compiled"] > 10) == (bytecode == "mpy")
