"""The simulated board: clocks, WiFi, sockets, ADC, ntptime, reset and flash layout.

Each test boots a real board process on a throwaway main.py (not the firmware) that
exercises the stand-ins and prints JSON lines.
"""
import json
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from host_sim.flash import FlashError, board_command, board_env, prepare_flash  # noqa: E402
from host_sim.servers.ntp import NtpServer  # noqa: E402

WIFI_UP = """
import network, time
wlan = network.WLAN(network.STA_IF)
wlan.active(True)
wlan.connect("simnet", "simkey")
while wlan.status() == network.STAT_CONNECTING:
    time.sleep_ms(10)
"""


def run_board(tmp_path, source, *, wifi=False, options=None, files=None, timeout=30):
    """Boot a board on `source` as main.py; returns (exit status, JSON lines, stderr).

    wifi=True prefixes a WiFi join (AP simnet) leaving `wlan`, `network`, `time` bound.
    """
    flash = tmp_path / "flash"
    flash.mkdir(exist_ok=True)
    (flash / "main.py").write_text((WIFI_UP if wifi else "") + textwrap.dedent(source))
    for name, content in (files or {}).items():
        (flash / name).write_bytes(content)
    proc = subprocess.run(board_command(flash, **(options or {})), env=board_env(),
                          capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc.returncode, lines, proc.stderr


def write_air(path, aps, link="up"):
    path.write_text(json.dumps({"aps": aps, "link": link}))


@pytest.fixture
def silent_server():
    """A TCP server on 127.0.0.1 that accepts and never sends a byte."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    conns = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    for c in conns:
        c.close()
    srv.close()


def test_ticks_wrap_and_ticks_diff_is_signed_across_the_boundary(tmp_path):
    start_ms = (1 << 30) - 50
    rc, lines, err = run_board(tmp_path, """
        import json, time
        t0 = time.ticks_ms()
        time.sleep_ms(120)
        t1 = time.ticks_ms()
        print(json.dumps({"t0": t0, "t1": t1, "fwd": time.ticks_diff(t1, t0),
                          "back": time.ticks_diff(t0, t1),
                          "add": time.ticks_add((1 << 30) - 1, 1),
                          "sub": time.ticks_add(0, -1),
                          "half": time.ticks_diff(1 << 29, 0),
                          "us": time.ticks_us() < (1 << 30)}))
    """, options={"ticks_start": start_ms})
    assert rc == 0, err
    r = lines[0]
    assert r["t0"] >= start_ms and r["t1"] < 1000          # wrapped past 2**30
    assert 110 <= r["fwd"] < 1000 and r["back"] == -r["fwd"]
    assert r["add"] == 0 and r["sub"] == (1 << 30) - 1
    assert r["half"] == -(1 << 29)                          # half period reads as negative
    assert r["us"]


def test_board_clock_starts_in_2000_and_gmtime_is_an_8_tuple(tmp_path):
    rc, lines, err = run_board(tmp_path, """
        import json, time
        t = time.time()
        gm = time.gmtime()
        print(json.dumps({"t": t, "gm": gm, "len": len(gm), "epoch": time.gmtime(0),
                          "round": time.mktime(time.gmtime(86400 * 400 + 3723)),
                          "int": isinstance(t, int), "local": time.localtime(0)}))
    """)
    assert rc == 0, err
    r = lines[0]
    assert r["int"] and 0 <= r["t"] < 5
    assert r["len"] == 8 and r["gm"][:3] == [2000, 1, 1]
    assert r["epoch"] == [2000, 1, 1, 0, 0, 0, 5, 1]       # a Saturday, day 1
    assert r["round"] == 86400 * 400 + 3723
    assert r["local"] == r["epoch"]


def test_clock_option_sets_board_time_in_unix_seconds(tmp_path):
    rc, lines, err = run_board(tmp_path, """
        import json, time
        print(json.dumps({"gm": time.gmtime(), "t": time.time()}))
    """, options={"clock": 1767225600})                   # 2026-01-01T00:00:00Z
    assert rc == 0, err
    assert lines[0]["gm"][:3] == [2026, 1, 1]
    assert abs(lines[0]["t"] - (1767225600 - 946684800)) < 5


# An ESP32 with a wrong key answers STAT_CONNECTING while its driver retries (as
# ports/esp32/network_wlan.c does): tests/test_field_ports.py covers it.
@pytest.mark.parametrize("port, ssid, key, expected", [
    ("esp32", "othernet", "simkey", ("STAT_NO_AP_FOUND", 201)),
    ("esp32", "simnet", "simkey", ("STAT_GOT_IP", 1010)),
    ("esp8266", "simnet", "nope", ("STAT_WRONG_PASSWORD", 2)),
    ("esp8266", "othernet", "simkey", ("STAT_NO_AP_FOUND", 3)),
    ("esp8266", "simnet", "simkey", ("STAT_GOT_IP", 5)),
])
def test_wifi_connect_lands_on_the_ports_status(tmp_path, port, ssid, key, expected):
    rc, lines, err = run_board(tmp_path, """
        import json, network, time
        wlan = network.WLAN(network.STA_IF)
        wlan.active(True)
        t0 = time.ticks_ms()
        wlan.connect(%r, %r)
        first = wlan.status()
        while wlan.status() == network.STAT_CONNECTING:
            time.sleep_ms(5)
        print(json.dumps({"first": first, "connecting": network.STAT_CONNECTING,
                          "status": wlan.status(), "ms": time.ticks_diff(time.ticks_ms(), t0),
                          "want": getattr(network, %r), "up": wlan.isconnected()}))
    """ % (ssid, key, expected[0]), options={"port": port})
    assert rc == 0, err
    r = lines[0]
    assert r["first"] == r["connecting"]
    assert r["status"] == r["want"] == expected[1]
    assert 90 <= r["ms"] <= 600
    assert r["up"] == (expected[0] == "STAT_GOT_IP")


def test_live_air_change_drops_and_restores_the_association(tmp_path):
    air = tmp_path / "air.json"
    write_air(air, {"simnet": {"key": "simkey", "up": True}})
    rc, lines, err = run_board(tmp_path, wifi=True, source="""
        import json
        print(json.dumps({"step": "up", "up": wlan.isconnected()}))
        with open(%r, "w") as f:
            f.write(json.dumps({"aps": {"simnet": {"key": "simkey", "up": False}}}))
        t0 = time.ticks_ms()
        while wlan.isconnected() and time.ticks_diff(time.ticks_ms(), t0) < 2000:
            time.sleep_ms(10)
        # ESP32: the driver retries a lost AP (reason 200), status() reads STAT_CONNECTING,
        # then STAT_NO_AP_FOUND once a retry found nothing (ports/esp32/network_wlan.c).
        print(json.dumps({"step": "down", "up": wlan.isconnected(), "status": wlan.status(),
                          "lost": [network.STAT_CONNECTING, network.STAT_NO_AP_FOUND]}))
        with open(%r, "w") as f:
            f.write(json.dumps({"aps": {"simnet": {"key": "simkey", "up": True}}}))
        while not wlan.isconnected() and time.ticks_diff(time.ticks_ms(), t0) < 4000:
            time.sleep_ms(10)
        print(json.dumps({"step": "back", "up": wlan.isconnected()}))
    """ % (str(air), str(air)), options={"air": air})
    assert rc == 0, err
    assert [x["up"] for x in lines] == [True, False, True]
    assert lines[1]["status"] in lines[1]["lost"]


def test_socket_without_wifi_is_unreachable(tmp_path, silent_server):
    rc, lines, err = run_board(tmp_path, """
        import json, socket, errno
        s = socket.socket()
        try:
            s.connect(("127.0.0.1", %d))
            print(json.dumps({"errno": None}))
        except OSError as e:
            print(json.dumps({"errno": e.errno, "want": errno.EHOSTUNREACH}))
    """ % silent_server)
    assert rc == 0, err
    assert lines[0]["errno"] == lines[0]["want"]


def test_socket_refuses_non_loopback_destinations(tmp_path):
    rc, lines, err = run_board(tmp_path, wifi=True, source="""
        import json, socket, errno
        out = []
        for ip in ("10.0.0.1", "8.8.8.8", "192.168.1.1"):
            s = socket.socket()
            try:
                s.connect((ip, 8883))
                out.append(None)
            except OSError as e:
                out.append(e.errno)
            s.close()
        print(json.dumps({"errnos": out, "want": errno.EHOSTUNREACH}))
    """)
    assert rc == 0, err
    assert lines[0]["errnos"] == [lines[0]["want"]] * 3


def test_socket_timeout_and_non_blocking_read(tmp_path, silent_server):
    rc, lines, err = run_board(tmp_path, wifi=True, source="""
        import json, socket, errno
        s = socket.socket()
        s.settimeout(0.3)
        s.connect(socket.getaddrinfo("localhost", %d)[0][-1])
        t0 = time.ticks_ms()
        try:
            s.read(4)
            got = None
        except OSError as e:
            got = e.errno
        waited = time.ticks_diff(time.ticks_ms(), t0)
        s.setblocking(False)
        nb = s.read(4)
        try:
            s.recv(4)
            recv_err = None
        except OSError as e:
            recv_err = e.errno
        print(json.dumps({"errno": got, "want": errno.ETIMEDOUT, "waited": waited,
                          "nb": nb, "recv": recv_err, "eagain": errno.EAGAIN}))
    """ % silent_server)
    assert rc == 0, err
    r = lines[0]
    assert r["errno"] == r["want"] and 250 <= r["waited"] < 2000
    assert r["nb"] is None and r["recv"] == r["eagain"]


def test_dark_link_reads_time_out_and_writes_vanish(tmp_path):
    air = tmp_path / "air.json"
    write_air(air, {"simnet": {"key": "simkey", "up": True}})
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    received = []

    def serve():
        conn, _ = srv.accept()
        conn.settimeout(5)
        conn.sendall(b"hi")
        try:
            while True:
                data = conn.recv(100)
                if not data:
                    break
                received.append(data)
        except OSError:
            pass
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        rc, lines, err = run_board(tmp_path, wifi=True, source="""
            import json, socket, errno
            s = socket.socket()
            s.settimeout(0.3)
            s.connect(("127.0.0.1", %d))
            time.sleep_ms(200)
            with open(%r, "w") as f:
                f.write(json.dumps({"aps": {"simnet": {"key": "simkey"}}, "link": "dark"}))
            time.sleep_ms(150)
            n = s.write(b"lost?")
            try:
                s.read(2)
                got = None
            except OSError as e:
                got = e.errno
            print(json.dumps({"n": n, "errno": got, "want": errno.ETIMEDOUT,
                              "up": wlan.isconnected()}))
            s.close()
        """ % (srv.getsockname()[1], str(air)), options={"air": air})
    finally:
        t.join(timeout=5)
        srv.close()
    assert rc == 0, err
    assert lines[0] == {"n": 5, "errno": lines[0]["want"], "want": lines[0]["want"], "up": True}
    assert b"".join(received) == b""


def test_adc_rms_matches_configured_mains_volts(tmp_path):
    rc, lines, err = run_board(tmp_path, """
        import json, machine, math, time
        adc = machine.ADC(machine.Pin(34))
        adc.atten(machine.ADC.ATTN_11DB)
        vals = []
        t0 = time.ticks_us()
        while time.ticks_diff(time.ticks_us(), t0) < 200000:     # 10 cycles at 50 Hz
            vals.append(adc.read_u16())
            time.sleep_us(200)
        vpc = 0.0125
        rms = math.sqrt(sum(((v - 32768) * vpc) ** 2 for v in vals) / len(vals))
        print(json.dumps({"rms": rms, "n": len(vals), "raw": adc.read(),
                          "uid": machine.unique_id().hex()}))
    """, options={"mains_v": 230, "mains_hz": 50, "noise_v": 1.0,
                  "adc_volts_per_count": 0.0125, "device_seed": "adc-1"})
    assert rc == 0, err
    r = lines[0]
    assert r["n"] > 200
    assert abs(r["rms"] - 230) / 230 < 0.01
    assert 0 <= r["raw"] <= 4095 and len(bytes.fromhex(r["uid"])) == 6


def test_unique_id_is_stable_per_device_seed(tmp_path):
    src = "import json, machine\nprint(json.dumps({'uid': machine.unique_id().hex()}))\n"
    ids = [run_board(tmp_path, src, options={"device_seed": seed})[1][0]["uid"]
           for seed in ("a", "a", "b")]
    assert ids[0] == ids[1] != ids[2]


def test_ntptime_sets_the_board_clock_from_the_ntp_server(tmp_path):
    with NtpServer(offset_s=0) as ntp:
        rc, lines, err = run_board(tmp_path, wifi=True, source="""
            import json, ntptime
            before = time.gmtime()[0]
            ntptime.settime()
            print(json.dumps({"before": before, "after": time.gmtime()[0],
                              "unix": time.time() + 946684800}))
        """, options={"ntp": ntp.address})
        assert ntp.queries >= 1
    assert rc == 0, err
    import time as host_time
    assert lines[0]["before"] == 2000
    assert abs(lines[0]["unix"] - host_time.time()) < 5


def test_ntptime_without_server_times_out(tmp_path):
    rc, lines, err = run_board(tmp_path, wifi=True, source="""
        import json, ntptime, errno
        ntptime.timeout = 0.3
        t0 = time.ticks_ms()
        try:
            ntptime.settime()
            got = None
        except OSError as e:
            got = e.errno
        print(json.dumps({"errno": got, "want": errno.ETIMEDOUT, "year": time.gmtime()[0],
                          "waited": time.ticks_diff(time.ticks_ms(), t0)}))
    """)
    assert rc == 0, err
    r = lines[0]
    assert r["errno"] == r["want"] and r["year"] == 2000 and r["waited"] >= 250


def test_machine_reset_reexecs_keeping_flash_and_rtc(tmp_path):
    rc, lines, err = run_board(tmp_path, """
        import json, machine, os, time
        boots = 0
        try:
            with open("boots.txt") as f:
                boots = int(f.read())
        except OSError:
            pass
        boots += 1
        with open("boots.txt", "w") as f:
            f.write(str(boots))
        print(json.dumps({"boot": boots, "cause": machine.reset_cause(),
                          "hard": machine.HARD_RESET, "year": time.gmtime()[0],
                          "ticks": time.ticks_ms()}))
        if boots == 1:
            machine.RTC().datetime((2030, 6, 1, 5, 12, 0, 0, 0))
            machine.reset()
    """)
    assert rc == 0, err
    assert [x["boot"] for x in lines] == [1, 2]
    assert lines[1]["cause"] == lines[1]["hard"]
    assert lines[1]["year"] == 2030 and lines[1]["ticks"] < 1000


def test_firmware_sees_only_flash_and_stdlib_and_tracebacks_exit_1(tmp_path):
    rc, lines, err = run_board(tmp_path, """
        import json, sys
        try:
            import cryptography
            leaked = True
        except ImportError:
            leaked = False
        print(json.dumps({"leaked": leaked, "path0": sys.path[0]}))
        raise RuntimeError("boom")
    """)
    assert rc == 1 and "RuntimeError: boom" in err
    assert lines[0]["leaked"] is False and lines[0]["path0"].endswith("flash")


def test_prepare_flash_lays_out_firmware_without_umqtt(tmp_path):
    # The board speaks MQTT with its own codec: no vendored library is needed on flash.
    firmware = tmp_path / "fw"
    (firmware / "securenode").mkdir(parents=True)
    with pytest.raises(FlashError, match="main.py is missing"):
        prepare_flash(tmp_path / "flash", {}, firmware_dir=firmware)
    (firmware / "main.py").write_text("print('hi')\n")
    (firmware / "securenode" / "__init__.py").write_text("VERSION = '0'\n")
    flash = prepare_flash(tmp_path / "flash", {"device_id": "b1"},
                          {"ca.der": b"\x30\x00", "sub/x.bin": b"x"}, firmware_dir=firmware)
    assert not (flash / "lib" / "umqtt").exists()
    assert (flash / "securenode" / "__init__.py").is_file()
    assert json.loads((flash / "config.json").read_text()) == {"device_id": "b1"}
    assert (flash / "ca.der").read_bytes() == b"\x30\x00"
    assert (flash / "sub" / "x.bin").read_bytes() == b"x"
    with pytest.raises(FlashError):
        prepare_flash(tmp_path / "flash", {}, {"../escape": b""}, firmware_dir=firmware)


def test_board_command_maps_options_to_flags(tmp_path):
    argv = board_command(tmp_path, port="esp8266", ntp=("127.0.0.1", 123), clock="host",
                         mains_v=120, air=None)
    assert argv[:3] == [sys.executable, "-m", "host_sim.board"]
    assert argv[3:] == ["--flash", str(tmp_path), "--port", "esp8266", "--ntp",
                        "127.0.0.1:123", "--clock", "host", "--mains-v", "120"]
