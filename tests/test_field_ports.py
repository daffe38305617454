"""The simulator is as strict as the ports (ADC and WiFi), and the firmware works on each.

Stand-ins (host_sim/stubs) against what the port sources say:
- ESP8266 ``machine.ADC`` takes one integer channel (ports/esp8266/machine_adc.c:
  mp_obj_get_int, so a Pin is a TypeError; ADC(0) is the TOUT pin, ADC(1) the supply) and
  has no ATTN_* constants; ESP32's takes a Pin or a GPIO number that has an ADC channel.
- ESP32 ``WLAN.status()`` as network_wlan.c computes it (1.22+): STAT_NO_AP_FOUND once an
  attempt found no AP, but a wrong WPA2 key (disconnect reason 15) answers STAT_CONNECTING
  for as long as the driver retries, and a scan is refused while it is connecting.
Then simulated boards: an ESP8266 samples through ADC(0); an ESP32 still names a wrong key
(by scanning at the deadline) and a missing AP.
"""

import time
import types

import pytest

from host_sim.stubs import machine as machine_stub
from host_sim.stubs import network as network_stub
from host_sim.stubs import time as time_stub
from host_sim.stubs.board_state import BoardState


def _machine(port):
    state = BoardState(port=port)
    return machine_stub.make_module(state, time_stub.make_module(state), lambda **kw: None)


def _wlan(port, air):
    state = BoardState(port=port)
    state.air = lambda: air
    network = network_stub.make_module(state)
    wlan = network.WLAN(network.STA_IF)
    wlan.active(True)
    return network, wlan


# --- ADC ------------------------------------------------------------------------------------
def test_esp8266_adc_takes_an_integer_channel_only():
    machine = _machine("esp8266")
    with pytest.raises(TypeError, match="can't convert Pin to int"):
        machine.ADC(machine.Pin(0))
    with pytest.raises(ValueError, match=r"ADC\(2\) doesn't exist"):
        machine.ADC(2)
    assert 0 <= machine.ADC(0).read_u16() <= 65535
    assert machine.ADC(1).read() == 3379            # the supply, in 1/1024 V
    assert not hasattr(machine.ADC, "ATTN_11DB") and not hasattr(machine.ADC(0), "atten")


def test_esp32_adc_takes_a_pin_or_gpio_with_an_adc_channel():
    machine = _machine("esp32")
    assert machine.ADC(machine.Pin(34)).pin == 34
    assert machine.ADC(36).pin == 36
    with pytest.raises(ValueError, match="invalid pin"):
        machine.ADC(machine.Pin(5))                 # GPIO 5 has no ADC channel
    assert machine.ADC.ATTN_11DB == 3


# --- WiFi -----------------------------------------------------------------------------------
AIR = {"aps": {"simnet": {"key": "simkey", "up": True}}, "link": "up"}


def _status_for(port, ssid, key, seconds):
    network, wlan = _wlan(port, AIR)
    wlan.connect(ssid, key)
    seen = set()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen.add(wlan.status())
        time.sleep(0.02)
    return network, wlan, seen


def test_esp32_wrong_key_answers_connecting_while_the_driver_retries():
    network, wlan, seen = _status_for("esp32", "simnet", "wrong", 1.2)
    assert seen == {network.STAT_CONNECTING}
    with pytest.raises(OSError, match="Wifi Internal State Error"):
        wlan.scan()                                 # refused while connecting
    wlan.disconnect()
    assert wlan.status() == network.STAT_IDLE
    assert [ap[0] for ap in wlan.scan()] == [b"simnet"]


def test_esp32_missing_ap_is_named_after_the_first_attempt():
    network, _, seen = _status_for("esp32", "nosuchnet", "simkey", 0.8)
    assert seen == {network.STAT_CONNECTING, network.STAT_NO_AP_FOUND}


def test_esp8266_names_a_wrong_key_directly():
    network, _, seen = _status_for("esp8266", "simnet", "wrong", 0.8)
    assert seen == {network.STAT_CONNECTING, network.STAT_WRONG_PASSWORD}


def test_esp32_lost_ap_reads_connecting_then_no_ap():
    air = {"aps": {"simnet": {"key": "simkey", "up": True}}, "link": "up"}
    network, wlan = _wlan("esp32", air)
    wlan.connect("simnet", "simkey")
    deadline = time.monotonic() + 2
    while not wlan.isconnected() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert wlan.isconnected()
    air["aps"]["simnet"]["up"] = False
    assert wlan.status() == network.STAT_CONNECTING   # reason 200 (beacon timeout) retries
    time.sleep(0.4)
    assert wlan.status() == network.STAT_NO_AP_FOUND


# --- simulated boards -----------------------------------------------------------------------
FAST_WIFI = {"wifi.timeout_ms": 1500, "backoff.min_ms": 100, "backoff.max_ms": 300}


@pytest.mark.parametrize("port, config, kind, says", [
    ("esp32", {"wifi.key": "not-the-key"}, "wifi_wrong_key", "most likely a wrong key"),
    ("esp32", {"wifi.ssid": "nosuchnet"}, "wifi_no_ap", "refused the board (status 201)"),
    ("esp8266", {"wifi.key": "not-the-key"}, "wifi_wrong_key", "refused the board (status 2)"),
    ("esp8266", {"wifi.ssid": "nosuchnet"}, "wifi_no_ap", "refused the board (status 3)"),
])
def test_each_port_names_a_wrong_key_and_a_missing_ap(launch, port, config, kind, says):
    board = launch("board-wifi-%s" % port, 1, config=dict(FAST_WIFI, **config), port=port,
                   rsa=port == "esp8266")
    error = board.wait_for("error", timeout=20, kind=kind)
    assert says in error["detail"], error
    assert "not-the-key" not in error["detail"]


def test_esp8266_board_samples_through_adc_channel_0(launch):
    # No broker on port 1: the board samples into its outbox while it backs off.
    board = launch("board-adc-8266", 1, port="esp8266", rsa=True,
                   config={"tls.allow_unverified": True, "backoff.min_ms": 100})
    board.wait_for("stored", timeout=20)
    assert not board.of("console"), board.of("console")


def test_esp8266_board_with_an_esp32_adc_pin_halts_naming_the_setting(launch):
    board = launch("board-adc-8266-bad", 1, port="esp8266", rsa=True,
                   config={"sample.adc_pin": 34, "tls.allow_unverified": True})
    error = board.wait_for("error", timeout=20, kind="config")
    assert error["detail"].startswith("sample.adc_pin 34: this board has no ADC there"), error
    assert "channel 0" in error["detail"]
    board.wait_for("halted", timeout=10, reason="config")
