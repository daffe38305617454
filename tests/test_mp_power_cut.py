"""Power cuts on real LittleFS: the board (launcher and interpreter, one process group) is
SIGKILLed at random points while the outbox writes to a slow file-backed block device, so
cuts land inside LittleFS programs. After every cut the image must mount (the launcher's
deploy step mounts it before each boot and refuses to go on if it cannot), the outbox must
open, and at the end every seq must be delivered or reported torn."""
import os
import random
import secrets
import signal
import time

from mp_fixtures import debug_lines, mp_launch  # noqa: F401  (fixture)

SAMPLE = {"sample.interval_ms": 60, "sample.window_ms": 25, "sample.samples": 16,
          "timeouts_ms.io": 1500, "timeouts_ms.connect": 1500, "backoff.min_ms": 100,
          "backoff.max_ms": 400}


def test_board_killed_during_outbox_writes_mounts_and_accounts_for_every_seq(mp_launch, pki):
    from tools.ingest import IngestServer

    kills = 12
    token = secrets.token_urlsafe(24)
    rng = random.Random(9)
    boots = []
    with IngestServer({"mp-cut": token}, pki.server.chain_pem, pki.server.key_pem) as ingest:
        config = dict(SAMPLE, transport="wss",
                      wss={"host": "localhost", "port": ingest.port, "token": token})
        flash = None
        in_program = 0
        for _ in range(kills):
            # 15 ms per 256-byte page: a reading's commit spans a few pages, so the board spends
            # most of its time programming flash and most cuts land inside a program.
            board = mp_launch("mp-cut", 1, config=config, flash=flash, flash_page_us=15000)
            flash = board.flash
            boots.append(board)
            board.wait_for("stored", timeout=30)
            time.sleep(rng.uniform(0.0, 0.5))
            os.killpg(board.proc.pid, signal.SIGKILL)
            board.proc.wait()
            board._reader.join(5)
            marker = flash.parent / (flash.name + ".state") / "flash.img.programming"
            in_program += marker.read_bytes() == b"1"
        board = mp_launch("mp-cut", 1, config=config, flash=flash)
        boots.append(board)
        board.wait_for("outbox_open", timeout=30)
        stored = [e["seq"] for b in boots for e in b.of("stored")]
        last = stored[-1]
        board.wait_for("acked", timeout=60, seq=last)
        board.stop()
        delivered = {r["seq"] for r in ingest.readings["mp-cut"]}
    # Every boot found a flash that mounts and an outbox that opens, with no traceback.
    assert all(len(b.of("outbox_open")) == 1 for b in boots)
    for b in boots:
        assert not [e for e in b.events if e.get("event") == "console"
                    and not e["text"].startswith("host_sim.board: micropython")], b.events
    # The cuts really land inside LittleFS programs (the block device marks them): about
    # two in three here; at least a quarter, so that luck cannot fail the test.
    assert in_program >= kills // 4, "only %d of %d cuts hit a flash program" % (in_program,
                                                                                 kills)
    flashed = [d for d in debug_lines(flash) if d["kind"] == "flash"]
    assert len(flashed) == kills + 1      # the image mounted before each boot
    torn = [e["seq"] for b in boots for e in b.of("outbox_torn")]
    top = max(max(delivered), max(torn or [0]))
    assert delivered | set(torn) == set(range(1, top + 1)), "a seq is neither stored nor torn"
    assert set(stored) <= delivered, "a reading the board stored never arrived"
    for prev, cur in zip(boots, boots[1:]):
        prev_seqs = [e["seq"] for e in prev.of("stored")]
        assert not prev_seqs or cur.of("outbox_open")[0]["next_seq"] > prev_seqs[-1]
    print("kills %d (%d inside a flash program), torn %d, stored %d, delivered %d"
          % (kills, in_program, len(torn), len(stored), len(delivered)))
