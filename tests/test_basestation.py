"""tools/basestation/: the device API, the 60 s one-time release, the CLI, the SQLite
state across restarts, revocation in Mosquitto, and the operator page's guards (the page
in a real browser: tests/test_basestation_browser.py)."""

import hashlib
import http.client
import json
import socket
import ssl
import time
import urllib.parse

import paho.mqtt.client as mqtt
import pytest

from conftest import Subscriber
from provision_helpers import (FakeClock, ask, base_station_cert, cli, cli_list,
                               poll, post, start_base_station)
from tools import basestation as bsm


@pytest.fixture
def clock():
    return FakeClock(time.time())


@pytest.fixture
def station(pki, pw_broker, tmp_path, clock):
    bs = start_base_station(pki, pw_broker, tmp_path / "state", clock=clock)
    yield bs
    bs.stop()


def mqtt_connect(pki, broker, user, password):
    """Connect with user name + password on the password listener; return the CONNACK code."""
    result = {}
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=user,
                         protocol=mqtt.MQTTv311)
    client.tls_set(ca_certs=str(pki.ca.cert_pem))
    client.username_pw_set(user, password)
    client.on_connect = lambda c, u, f, rc, p: result.setdefault("rc", rc.value)
    client.connect("localhost", broker.password_port)
    deadline = time.monotonic() + 10
    while "rc" not in result and time.monotonic() < deadline:
        client.loop(0.1)
    client.disconnect()
    return result.get("rc")


def wait_for_login(pki, broker, user, password, want=0):
    # SIGHUP is asynchronous: give Mosquitto a moment to re-read its password file.
    deadline = time.monotonic() + 5
    while True:
        rc = mqtt_connect(pki, broker, user, password)
        if rc == want or time.monotonic() > deadline:
            return rc
        time.sleep(0.1)


def test_pending_until_approved_then_credentials_released_once_and_mqtt_accepts_them(
        pki, pw_broker, station, clock, caplog):
    rid, nonce = ask(pki, station.port, "dev-once")
    assert poll(pki, station.port, rid, "dev-once", nonce) == (200, {"status": "pending"})
    station.store.decide(str(rid), True, clock(), "test")
    clock.advance(59)
    status, doc = poll(pki, station.port, rid, "dev-once", nonce)
    assert status == 200 and doc["status"] == "approved"
    creds = doc["mqtt"]
    assert creds["user"] == "dev-once" and creds["port"] == pw_broker.password_port
    assert poll(pki, station.port, rid, "dev-once", nonce) == (410, {"status": "gone"})
    assert wait_for_login(pki, pw_broker, "dev-once", creds["password"]) == 0
    # Never in plain text: not in the state, not in the broker's file, not in the log.
    state = b"".join(p.read_bytes() for p in station.store.dir.iterdir())
    assert creds["password"].encode() not in state
    assert creds["password"] not in pw_broker.password_path.read_text()
    assert "dev-once:$7$" in pw_broker.password_path.read_text()
    assert creds["password"] not in caplog.text and nonce not in caplog.text


def test_another_address_or_nonce_gets_nothing_and_does_not_use_up_the_release(
        pki, station, clock):
    rid, nonce = ask(pki, station.port, "dev-ip")
    station.store.decide("dev-ip", True, clock(), "test")
    assert poll(pki, station.port, rid, "dev-ip", nonce, source_ip="127.0.0.2") == (
        404, {"status": "unknown"})
    other_nonce = "0" * 32
    assert poll(pki, station.port, rid, "dev-ip", other_nonce) == (404, {"status": "unknown"})
    assert poll(pki, station.port, rid, "dev-other", nonce) == (404, {"status": "unknown"})
    status, doc = poll(pki, station.port, rid, "dev-ip", nonce)
    assert status == 200 and doc["status"] == "approved"


def test_credentials_are_gone_60_s_after_approval(pki, pw_broker, station, clock):
    rid, nonce = ask(pki, station.port, "dev-late")
    station.store.decide(str(rid), True, clock(), "test")
    clock.advance(61)
    assert poll(pki, station.port, rid, "dev-late", nonce) == (200, {"status": "expired"})
    assert poll(pki, station.port, rid, "dev-late", nonce) == (200, {"status": "expired"})
    assert "dev-late:" not in pw_broker.password_path.read_text()


def test_denied_request_is_told_so_and_gets_no_credentials(pki, pw_broker, station, clock):
    rid, nonce = ask(pki, station.port, "dev-no")
    station.store.decide("dev-no", False, clock(), "test")
    assert poll(pki, station.port, rid, "dev-no", nonce) == (200, {"status": "denied"})
    assert "dev-no:" not in pw_broker.password_path.read_text()


def test_undecided_request_expires_after_15_minutes(pki, station, clock):
    rid, nonce = ask(pki, station.port, "dev-idle")
    clock.advance(bsm.PENDING_TTL_S + 1)
    assert poll(pki, station.port, rid, "dev-idle", nonce) == (200, {"status": "expired"})


def test_a_new_request_from_the_same_board_replaces_its_older_one_but_a_lookalike_does_not(
        pki, station):
    old, _ = ask(pki, station.port, "dev-twice")
    new, _ = ask(pki, station.port, "dev-twice")
    lookalike, _ = ask(pki, station.port, "dev-twice", source_ip="127.0.0.2")
    pending = [r["id"] for r in station.store.requests(status="pending")
               if r["device_id"] == "dev-twice"]
    assert pending == [new, lookalike] and old not in pending
    with pytest.raises(bsm.BaseStationError, match="2 pending requests claim device id"):
        station.store.find_pending("dev-twice")


def test_request_survives_a_restart_of_the_base_station(pki, pw_broker, tmp_path):
    state = tmp_path / "restart-state"
    first = start_base_station(pki, pw_broker, state)
    try:
        rid, nonce = ask(pki, first.port, "dev-restart")
    finally:
        first.stop()
    listed = cli_list(state)["requests"]
    assert [(r["id"], r["device_id"], r["status"]) for r in listed] == [
        (rid, "dev-restart", "pending")]
    approved = cli(state, "approve", "dev-restart")
    assert approved.returncode == 0, approved.stderr
    second = start_base_station(pki, pw_broker, state)
    try:
        status, doc = poll(pki, second.port, rid, "dev-restart", nonce)
    finally:
        second.stop()
    assert status == 200 and doc["status"] == "approved"


def test_comparison_code_is_sha256_of_nonce_and_certificate_fingerprint(pki, station):
    rid, nonce = ask(pki, station.port, "dev-code")
    cert_der = ssl.PEM_cert_to_DER_cert(base_station_cert(pki)[0].read_text().split(
        "-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n")
    digest = hashlib.sha256(bytes.fromhex(nonce) + hashlib.sha256(cert_der).digest()).digest()
    want = "%06d" % (int.from_bytes(digest, "big") % 1000000)
    listed = {r["id"]: r for r in station.store.requests()}
    assert listed[rid]["code"] == want and len(want) == 6


def test_cli_lists_approves_denies_and_refuses_unknown_ids(pki, station):
    state = station.store.dir
    rid_a, _ = ask(pki, station.port, "dev-cli-a")
    rid_b, _ = ask(pki, station.port, "dev-cli-b")
    table = cli(state, "list")
    assert table.returncode == 0 and "dev-cli-a" in table.stdout and "dev-cli-b" in table.stdout
    assert cli(state, "approve", str(rid_a)).returncode == 0
    assert cli(state, "deny", "dev-cli-b").returncode == 0
    statuses = {r["id"]: r["status"] for r in cli_list(state)["requests"]}
    assert statuses[rid_a] == "approved" and statuses[rid_b] == "denied"
    again = cli(state, "approve", str(rid_b))
    assert again.returncode == 1 and "not pending" in again.stderr
    assert "Traceback" not in again.stderr
    assert cli(state, "revoke", "nobody").returncode == 1


def test_revoke_removes_credentials_and_the_next_connection_is_refused(pki, pw_broker, station,
                                                                       clock):
    rid, nonce = ask(pki, station.port, "dev-revoke")
    station.store.decide(str(rid), True, clock(), "test")
    password = poll(pki, station.port, rid, "dev-revoke", nonce)[1]["mqtt"]["password"]
    assert wait_for_login(pki, pw_broker, "dev-revoke", password) == 0
    done = cli(station.store.dir, "revoke", "dev-revoke")
    assert done.returncode == 0, done.stderr
    assert "dev-revoke:" not in pw_broker.password_path.read_text()
    # CONNACK 5 (not authorised), which paho reports as reason code 135 "Not authorized".
    assert wait_for_login(pki, pw_broker, "dev-revoke", password, want=135) == 135
    assert {d["device_id"]: d["status"] for d in cli_list(station.store.dir)["devices"]}[
        "dev-revoke"] == "revoked"


def test_confirm_marks_the_device_confirmed_only_with_its_nonce(pki, station, clock):
    rid, nonce = ask(pki, station.port, "dev-conf")
    station.store.decide(str(rid), True, clock(), "test")
    poll(pki, station.port, rid, "dev-conf", nonce)
    doc = {"device_id": "dev-conf", "request_id": rid, "nonce": "1" * 32}
    assert post(pki, station.port, "/v1/auth/confirm", doc) == (404, {"status": "unknown"})
    doc["nonce"] = nonce
    assert post(pki, station.port, "/v1/auth/confirm", doc) == (200, {"status": "confirmed"})
    assert {d["device_id"]: d["status"] for d in station.store.devices()}["dev-conf"] == \
        "confirmed"


@pytest.mark.parametrize("doc, field", [
    ({"device_id": "bad id", "name": "n", "firmware": "1", "nonce": "0" * 32}, "device_id"),
    ({"device_id": "d", "name": "<b>\x07", "firmware": "1", "nonce": "0" * 32}, "name"),
    ({"device_id": "d", "name": "n", "firmware": "1", "nonce": "short"}, "nonce"),
    ({"device_id": "d", "name": "n", "nonce": "0" * 32}, "firmware"),
])
def test_malformed_requests_are_refused_by_field(pki, station, doc, field):
    assert post(pki, station.port, "/v1/auth/request", doc) == (
        400, {"status": "invalid", "error": field})


def test_oversized_body_is_refused_before_it_is_read(pki, station):
    # Only the head is sent: the answer must come without waiting for the announced body.
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert_pem))
    conn = http.client.HTTPSConnection("127.0.0.1", station.port, context=ctx, timeout=10)
    try:
        conn.putrequest("POST", "/v1/auth/request")
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(bsm.MAX_BODY_BYTES + 1))
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 413 and json.loads(response.read()) == {
            "status": "too_large"}
    finally:
        conn.close()


def test_beacon_carries_the_port_and_the_ca_fingerprint(pki, pw_broker, tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(5)
        bs = start_base_station(pki, pw_broker, tmp_path / "b", beacon=udp.getsockname())
        try:
            data, _ = udp.recvfrom(512)
        finally:
            bs.stop()
    assert json.loads(data) == {"service": "securenode-base", "port": bs.port,
                                "ca_sha256": hashlib.sha256(pki.ca.cert_der.read_bytes()
                                                            ).hexdigest()}


# --- operator page guards without a browser (the browser flow: test_basestation_browser.py) --
def _web(pki, port, method, path, form=None, headers=None):
    ctx = ssl.create_default_context(cafile=str(pki.ca.cert_pem))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        body = urllib.parse.urlencode(form) if form is not None else None
        hdrs = {"Content-Type": "application/x-www-form-urlencoded"}
        hdrs.update(headers or {})
        conn.request(method, path, body, hdrs)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read().decode()
    finally:
        conn.close()


def _login(pki, station):
    station.store.set_operator_password("correct horse battery")
    origin = {"Origin": "https://127.0.0.1:%d" % station.port}
    status, headers, _ = _web(pki, station.port, "POST", "/login",
                              {"password": "correct horse battery"}, origin)
    assert status == 303
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=Strict" in cookie
    token = cookie.split(";")[0]
    _, _, page = _web(pki, station.port, "GET", "/", headers={"Cookie": token})
    csrf = page.split("name='csrf' value='")[1].split("'")[0]
    return token, csrf, origin


def test_operator_password_is_stored_as_a_salted_hash(station):
    station.store.set_operator_password("correct horse battery")
    stored = station.store.setting("operator_password")
    assert stored.startswith("scrypt$") and "correct horse" not in stored
    assert bsm.check_password("correct horse battery", stored)
    assert not bsm.check_password("wrong", stored)


def test_without_login_no_page_and_no_decision(pki, station):
    rid, _ = ask(pki, station.port, "dev-nologin")
    status, headers, _ = _web(pki, station.port, "GET", "/")
    assert status == 303 and headers["Location"] == "/login"
    origin = {"Origin": "https://127.0.0.1:%d" % station.port}
    status, _, _ = _web(pki, station.port, "POST", "/decide",
                        {"request": rid, "action": "allow", "csrf": "x"}, origin)
    assert status == 403
    station.store.set_operator_password("correct horse battery")
    status, _, _ = _web(pki, station.port, "POST", "/login", {"password": "wrong password"},
                        origin)
    assert status == 401
    assert [r["status"] for r in station.store.requests() if r["id"] == rid] == ["pending"]


def test_decision_needs_same_origin_and_the_sessions_csrf_token(pki, station):
    rid, _ = ask(pki, station.port, "dev-csrf")
    token, csrf, origin = _login(pki, station)
    form = {"request": rid, "action": "allow", "csrf": csrf}
    cookie = {"Cookie": token}
    assert _web(pki, station.port, "POST", "/decide", form,
                dict(cookie, Origin="https://evil.example"))[0] == 403
    assert _web(pki, station.port, "POST", "/decide", form, cookie)[0] == 403  # no Origin
    assert _web(pki, station.port, "POST", "/decide", dict(form, csrf="forged"),
                dict(cookie, **origin))[0] == 403
    assert [r["status"] for r in station.store.requests() if r["id"] == rid] == ["pending"]
    assert _web(pki, station.port, "POST", "/decide", form, dict(cookie, **origin))[0] == 303
    assert [r["status"] for r in station.store.requests() if r["id"] == rid] == ["approved"]


def test_page_escapes_what_devices_send(pki, station):
    ask(pki, station.port, "dev-xss", name="<script>alert(1)</script>")
    token, _, _ = _login(pki, station)
    _, _, page = _web(pki, station.port, "GET", "/", headers={"Cookie": token})
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_pending_requests_are_bounded(pki, station, monkeypatch):
    monkeypatch.setattr(bsm.store, "MAX_PENDING", 2)
    ask(pki, station.port, "dev-flood-1")
    ask(pki, station.port, "dev-flood-2")
    status, doc = post(pki, station.port, "/v1/auth/request", {
        "device_id": "dev-flood-3", "name": "n", "firmware": "1", "nonce": "a" * 32})
    assert (status, doc) == (429, {"status": "busy"})


def test_login_throttle_remembers_a_bounded_number_of_addresses():
    now = [0.0]
    guard = bsm.LoginGuard(concurrency=1, delay_s=1.0, max_delay_s=4.0, max_sources=3,
                           clock=lambda: now[0])
    try:
        for ip in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
            assert guard.begin(ip) is None
            guard.end(ip, ok=False)
        assert guard.begin("192.0.2.1") == 1.0            # waits after its wrong password
        assert guard.begin("192.0.2.4") is not None       # table full: newcomers wait too
        now[0] = 10.0                                     # long past every wait: pruned
        assert guard.begin("192.0.2.4") is None
        assert guard.begin("192.0.2.4") is not None       # one attempt in flight at a time
    finally:
        guard.close()


def test_denied_and_expired_requests_are_deleted_after_a_week(pki, station, clock):
    denied, _ = ask(pki, station.port, "dev-old-denied")
    station.store.decide(str(denied), False, clock(), "test")
    expired, _ = ask(pki, station.port, "dev-old-expired")
    start = clock()
    clock.advance(bsm.PENDING_TTL_S + 1)
    station.store.requests(now=clock())          # marks it expired
    clock.now = start + bsm.store.DECIDED_RETENTION_S - 10
    ask(pki, station.port, "dev-new")
    assert {denied, expired} <= {r["id"] for r in station.store.requests()}
    clock.now = start + bsm.PENDING_TTL_S + 1 + bsm.store.DECIDED_RETENTION_S + 1
    ask(pki, station.port, "dev-newer")
    assert not {denied, expired} & {r["id"] for r in station.store.requests()}


def test_broker_password_tool_failure_keeps_the_approval_for_a_later_poll(pki, station, clock):
    rid, nonce = ask(pki, station.port, "dev-retry")
    station.store.decide(str(rid), True, clock(), "test")
    real_tool = station.passwords.tool
    station.passwords.tool = "false"
    assert poll(pki, station.port, rid, "dev-retry", nonce) == (503, {"status": "unavailable"})
    station.passwords.tool = real_tool
    status, doc = poll(pki, station.port, rid, "dev-retry", nonce)
    assert status == 200 and doc["status"] == "approved"


def test_issued_credentials_reach_only_the_devices_own_topics(pki, pw_broker, station, clock):
    rid, nonce = ask(pki, station.port, "dev-acl")
    station.store.decide(str(rid), True, clock(), "test")
    password = poll(pki, station.port, rid, "dev-acl", nonce)[1]["mqtt"]["password"]
    assert wait_for_login(pki, pw_broker, "dev-acl", password) == 0
    sub = Subscriber(pki, pw_broker.port)
    try:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev-acl",
                             protocol=mqtt.MQTTv311)
        client.tls_set(ca_certs=str(pki.ca.cert_pem))
        client.username_pw_set("dev-acl", password)
        client.connect("localhost", pw_broker.password_port)
        client.loop_start()
        try:
            client.publish("devices/someone-else/readings", b'{"forged": true}', qos=1
                           ).wait_for_publish(5)
            client.publish("devices/dev-acl/readings", b'{"own": true}', qos=1
                           ).wait_for_publish(5)
            deadline = time.monotonic() + 5
            while not sub.messages and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)
        finally:
            client.loop_stop()
            client.disconnect()
    finally:
        sub.stop()
    # Mosquitto acknowledges a denied QoS 1 publish (MQTT 3.1.1 has no way to refuse it)
    # and drops it: only the device's own topic reaches subscribers.
    assert [t for t, _ in sub.messages] == ["devices/dev-acl/readings"]
