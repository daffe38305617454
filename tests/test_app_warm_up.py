"""The app's boot warm-up (securenode/app.py Node.boot) makes the SSLContext and the first
link before any reading fragments the heap. When only the link finds no room there, the
context already made must be the one the first connection uses: asking for its ~3 KB in one
piece again, on a heap the link's failed attempt cut up, is what left a real-MicroPython
board resetting in a loop (issue 10, found bisecting the MQTTS heap).

A simulated board whose main.py makes the first open_link() raise MemoryError, as a heap
too short for the link's module would; it counts the SSLContexts made."""

MAIN = b'''
import ssl
from securenode import settings

settings.preload()
from securenode import app, links

made = [0]
_context = ssl.SSLContext


def counted(*args):
    made[0] += 1
    return _context(*args)


ssl.SSLContext = counted
_open_link = links.open_link
calls = [0]


def open_link(*args):
    calls[0] += 1
    if calls[0] == 1:
        raise MemoryError("memory allocation failed, allocating 976 bytes")
    return _open_link(*args)


links.open_link = open_link
try:
    app.main()
finally:
    print('{"event": "test_counts", "contexts": %d, "links": %d}' % (made[0], calls[0]))
'''


def test_a_link_that_finds_no_room_at_boot_keeps_the_context_made_for_it(launch, broker):
    board = launch("board-warm", broker.port, config={"run.max_readings": 2},
                   files={"main.py": MAIN})
    board.wait_for("halted", timeout=60, reason="done")
    counts = board.wait_for("test_counts", timeout=10)
    assert [e["seq"] for e in board.of("acked")] == [1, 2]
    assert counts["links"] == 2  # the warm-up's, refused, then connect()'s own
    assert counts["contexts"] == 1, counts
