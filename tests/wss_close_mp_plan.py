# Run by tests/test_wss_close_real_tcp.py on the real MicroPython unix port (real socket,
# ssl on Mbed TLS): drives securenode.wss_client through the cases in argv[1] (JSON) and
# prints one JSON line per case. MicroPython idioms only: no f-strings, no pathlib.
import gc
import json
import sys
import time

from securenode import ws_frame
from securenode.pinned_tls import PinnedTls
from securenode.wss_client import WssClient


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def main():
    with open(sys.argv[1]) as f:
        plan = json.loads(f.read())
    tls = PinnedTls([_read(plan["ca"])], None, None, "localhost", 3000, plan["io_ms"])
    for case in plan["cases"]:
        gc.collect()  # as the app does before each connection
        name = case["name"]
        ws = WssClient("127.0.0.1", plan["port"], "/case/" + name, tls, 2000, plan["io_ms"],
                       3000, case.get("max", 4096))
        started = time.ticks_ms()
        out = {"case": name}
        try:
            if case.get("link"):
                # The ingest link on top: one reading, answered by what the peer sends.
                from securenode.wss_link import WssLink
                link = WssLink("board-1", "127.0.0.1", plan["port"], "/case/" + name, "tok",
                               tls, 2000, plan["io_ms"], 3000, case.get("max", 4096))
                link.connect()
                link.publish(b"devices/board-1/readings", b'{"seq":1}')
                out["acked"] = True
                raise StopIteration
            ws.connect()
            if case.get("close"):
                ws.send(b"hello")
                time.sleep_ms(200)  # the server's frames are unread in our buffer now
                ws.close(case["close"], "done")
                out["closed"] = True
            elif case.get("echo"):
                ws.send(b"e" * case["echo"], ws_frame.OP_BINARY)
                out["echoed"] = len(ws.recv()[1])
                ws.close()
            else:
                while True:
                    ws.recv()
        except StopIteration:
            pass
        except Exception as exc:
            out["type"] = type(exc).__name__
            out["kind"] = getattr(exc, "kind", None)
            out["code"] = getattr(exc, "close_code", None)
            out["detail"] = str(exc)
        out["ms"] = time.ticks_diff(time.ticks_ms(), started)
        print(json.dumps(out))


main()
