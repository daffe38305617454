"""After a refused TLS handshake, the explanation code leaves the heap again (issue 10), on
real MicroPython: tls_explain (and x509_peek, when it was needed) are loaded only to name a
failure. MicroPython keeps an imported submodule alive as an attribute of its package, so
dropping it from sys.modules alone frees nothing: both must go.
"""
from host_sim.servers.tls_recorder import RecordingTlsServer
from mp_fixtures import mp_launch  # noqa: F401  (fixture)

# The firmware's boot, with every explanation followed by a look at what stayed loaded.
EXPLAIN_MAIN = b"""import json
import sys

import securenode
from securenode import app, pinned_tls

_explain = pinned_tls.PinnedTls.explain


def _explained(self, exc, host, port):
    err = _explain(self, exc, host, port)
    names = ("tls_explain", "x509_peek")
    print(json.dumps({"event": "explain_left", "kind": err.kind,
                      "on_package": [n for n in names if hasattr(securenode, n)],
                      "in_sys_modules": [n for n in names if "securenode." + n in sys.modules]}))
    return err


pinned_tls.PinnedTls.explain = _explained
app.main()
"""


def test_explaining_a_refused_handshake_leaves_nothing_loaded(mp_launch, pki):
    with RecordingTlsServer(pki.rogue.chain_pem, pki.rogue.key_pem) as peer:
        board = mp_launch("mp-explain", 1, bytecode="mpy", files={"main.py": EXPLAIN_MAIN},
                          config={"transport": "jsonl",
                                  "jsonl": {"host": "localhost", "port": peer.port},
                                  "timeouts_ms.handshake": 3000, "backoff.min_ms": 100,
                                  "backoff.max_ms": 400})
        left = board.wait_for("explain_left", timeout=60)
        board.stop()
    assert left["kind"] == "unknown_ca"
    assert (left["in_sys_modules"], left["on_package"]) == ([], [])
