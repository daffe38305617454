# The main.py a test board boots instead of the app (tests/test_wss_client.py): it drives
# securenode.wss_client through the cases in plan.json and reports each as events.
# Runs on the board (simulator stand-ins), so MicroPython-only idioms: no f-strings.
import binascii
import hashlib
import json
import time

from securenode import wifi, ws_frame
from securenode.events import emit
from securenode.pinned_tls import PinnedTls
from securenode.wss_client import WssClient


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _pattern(n, text):
    if text:
        return ("0123456789abcdef" * (n // 16 + 1))[:n].encode()
    return bytes((i * 7 + 3) & 0xFF for i in range(n))


def _digest(data):
    return binascii.hexlify(hashlib.sha256(bytes(data)).digest()).decode()


def _run_steps(ws, name, steps):
    for step in steps:
        op = step[0]
        if op == "echo":
            opcode = ws_frame.OP_TEXT if step[1] == "text" else ws_frame.OP_BINARY
            data = _pattern(step[2], step[1] == "text")
            ws.send(data, opcode)
            got_op, got = ws.recv()
            emit("echoed", case=name, kind=step[1], size=step[2], got_size=len(got),
                 same=got_op == opcode and _digest(got) == _digest(data))
        elif op == "recv":
            while True:
                got_op, got = ws.recv()
                if got_op in (ws_frame.OP_TEXT, ws_frame.OP_BINARY):
                    break
                emit("control", case=name, opcode=got_op, payload=bytes(got).decode())
            emit("received", case=name, opcode=got_op, size=len(got),
                 text=bytes(got[:64]).decode() if got_op == ws_frame.OP_TEXT else None)
        elif op == "ping":
            ws.send(step[1].encode(), ws_frame.OP_PING)
            while True:
                got_op, got = ws.recv()
                if got_op == ws_frame.OP_PONG:
                    break
            emit("pong", case=name, payload=bytes(got).decode())
        elif op == "close":
            ws.close(step[1], step[2])
            emit("closed", case=name, open=ws.open)


def main():
    plan = json.loads(_read("plan.json"))
    wifi.join("simnet", "simkey", 10000)
    tls = PinnedTls([_read(p) for p in plan.get("ca", ["ca.der"])], _read("device.crt.der"),
                    _read("device.key.der"), "localhost", 3000, plan.get("io_ms", 2000))
    for case in plan["cases"]:
        name = case["name"]
        ws = WssClient("localhost", case["port"], case.get("path", "/"), tls, 2000,
                       case.get("io_ms", plan.get("io_ms", 2000)), case.get("handshake_ms", 3000),
                       case.get("max", 4096), case.get("subprotocols", ()),
                       [tuple(h) for h in case.get("headers", ())])
        started = time.ticks_ms()
        try:
            ws.connect()
            emit("case_connected", case=name, subprotocol=ws.subprotocol)
            _run_steps(ws, name, case.get("steps", ()))
            if ws.open:
                ws.close()
            emit("case_ok", case=name)
        except Exception as exc:
            emit("case_error", case=name, type=type(exc).__name__,
                 kind=getattr(exc, "kind", None), code=getattr(exc, "close_code", None),
                 detail=str(exc), ms=time.ticks_diff(time.ticks_ms(), started))
    emit("plan_done")


main()
