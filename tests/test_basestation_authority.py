"""Who the base station may hand credentials to, and whom it may signal (issue 13, items 8
and 9): a reserved id (named in the broker's ACL) is never approved, an enrolled id only
with an explicit --replace, on the page and in the CLI; the broker reload reaches only a
mosquitto process, and the board gets an answer either way."""

import re
import subprocess
import sys
import time

import pytest

from provision_helpers import (SUBSCRIBER, FakeClock, ask, cli, cli_list, poll, post,
                               start_base_station)
from test_basestation import _login, _web, wait_for_login
from tools import basestation as bsm


@pytest.fixture
def clock():
    return FakeClock(time.time())


@pytest.fixture
def station(pki, pw_broker, tmp_path, clock):
    bs = start_base_station(pki, pw_broker, tmp_path / "state", clock=clock)
    yield bs
    bs.stop()


def enrol(pki, station, clock, device_id, *approve_args):
    rid, nonce = ask(pki, station.port, device_id)
    done = cli(station.store.dir, "approve", str(rid), *approve_args)
    assert done.returncode == 0, done.stderr
    status, doc = poll(pki, station.port, rid, device_id, nonce)
    assert status == 200 and doc["status"] == "approved", (status, doc)
    return doc["mqtt"]["password"]


# --- item 8: reserved and enrolled ids -----------------------------------------------------
def test_an_id_named_in_the_broker_acl_is_never_approved_by_cli_or_page(pki, pw_broker,
                                                                        station):
    assert SUBSCRIBER in station.reserved_ids()
    rid, nonce = ask(pki, station.port, SUBSCRIBER)
    for extra in ((), ("--replace",)):
        refused = cli(station.store.dir, "approve", str(rid), *extra)
        assert refused.returncode == 1 and refused.stderr.count("\n") == 1, refused.stderr
        assert "reserved" in refused.stderr and "Traceback" not in refused.stderr
    listed = cli(station.store.dir, "list")
    assert re.search(r"%s .*pending  \(reserved id" % SUBSCRIBER, listed.stdout), listed.stdout
    token, csrf, origin = _login(pki, station)
    _, _, page = _web(pki, station.port, "GET", "/", headers={"Cookie": token})
    row = re.search(r"<tr class='pending' data-device='%s'>.*?</tr>" % SUBSCRIBER, page).group(0)
    assert "reserved id" in row and "id='allow-%d'" % rid not in row
    assert "id='replace-%d'" % rid not in row and "id='deny-%d'" % rid in row
    for action in ("allow", "replace"):
        status, _, text = _web(pki, station.port, "POST", "/decide",
                               {"request": rid, "action": action, "csrf": csrf},
                               dict(origin, Cookie=token))
        assert status == 409 and "reserved" in text
    assert poll(pki, station.port, rid, SUBSCRIBER, nonce) == (200, {"status": "pending"})
    assert "%s:" % SUBSCRIBER not in pw_broker.password_path.read_text()


def test_an_enrolled_id_is_flagged_and_replaced_only_with_replace(pki, pw_broker, station,
                                                                  clock):
    first = enrol(pki, station, clock, "dev-twice-enrolled")
    assert wait_for_login(pki, pw_broker, "dev-twice-enrolled", first) == 0
    rid, nonce = ask(pki, station.port, "dev-twice-enrolled")
    refused = cli(station.store.dir, "approve", str(rid))
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "already has credentials" in refused.stderr and "--replace" in refused.stderr
    assert cli_list(station.store.dir)["requests"][-1]["flag"].startswith("has credentials")
    token, csrf, origin = _login(pki, station)
    _, _, page = _web(pki, station.port, "GET", "/", headers={"Cookie": token})
    row = re.search(r"<tr class='pending' data-device='dev-twice-enrolled'>.*?</tr>",
                    page).group(0)
    assert "already has credentials" in row and "id='replace-%d'" % rid in row
    assert "id='allow-%d'" % rid not in row
    status, _, text = _web(pki, station.port, "POST", "/decide",
                           {"request": rid, "action": "allow", "csrf": csrf},
                           dict(origin, Cookie=token))
    assert status == 409 and "already has credentials" in text
    # The old credentials still work: nothing was replaced behind the operator's back.
    assert poll(pki, station.port, rid, "dev-twice-enrolled", nonce) == (
        200, {"status": "pending"})
    assert wait_for_login(pki, pw_broker, "dev-twice-enrolled", first) == 0
    # An explicit Replace on the page re-enrols it; the old password stops working.
    status, _, _ = _web(pki, station.port, "POST", "/decide",
                        {"request": rid, "action": "replace", "csrf": csrf},
                        dict(origin, Cookie=token))
    assert status == 303
    second = poll(pki, station.port, rid, "dev-twice-enrolled", nonce)[1]["mqtt"]["password"]
    assert wait_for_login(pki, pw_broker, "dev-twice-enrolled", second) == 0
    assert wait_for_login(pki, pw_broker, "dev-twice-enrolled", first, want=135) == 135


def test_cli_replace_re_enrols_an_enrolled_id(pki, pw_broker, station, clock):
    enrol(pki, station, clock, "dev-cli-replace")
    newer = enrol(pki, station, clock, "dev-cli-replace", "--replace")
    assert wait_for_login(pki, pw_broker, "dev-cli-replace", newer) == 0


# --- item 9: the broker reload -------------------------------------------------------------
@pytest.fixture
def bystander():
    """An unrelated process (SIGHUP would kill it) whose pid a stale setting may name."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def _release_with(pki, station, clock, passwords, device_id):
    station.passwords = passwords
    rid, nonce = ask(pki, station.port, device_id)
    station.decide(str(rid), True, "test")
    return rid, nonce, poll(pki, station.port, rid, device_id, nonce)


def test_a_stale_pid_is_never_signalled_and_the_board_is_answered(pki, pw_broker, station, clock,
                                                                  bystander, caplog):
    stale = bsm.MosquittoPasswords(pw_broker.password_path, bystander.pid)
    rid, nonce, answer = _release_with(pki, station, clock, stale, "dev-stale-pid")
    assert answer == (503, {"status": "unavailable"})
    time.sleep(0.2)
    assert bystander.poll() is None, "the unrelated process was signalled"
    assert re.search(r"pid %d is 'python3?[^']*', not mosquitto" % bystander.pid, caplog.text)
    # The approval stays: with the broker's pid the next poll gets the credentials.
    station.passwords = bsm.MosquittoPasswords(pw_broker.password_path, pw_broker.proc.pid)
    status, doc = poll(pki, station.port, rid, "dev-stale-pid", nonce)
    assert status == 200 and doc["status"] == "approved"
    assert wait_for_login(pki, pw_broker, "dev-stale-pid", doc["mqtt"]["password"]) == 0


def test_a_vanished_pid_gets_the_board_an_answer(pki, pw_broker, station, clock, caplog):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    passwords = bsm.MosquittoPasswords(pw_broker.password_path, gone.pid)
    _, _, answer = _release_with(pki, station, clock, passwords, "dev-gone-pid")
    assert answer == (503, {"status": "unavailable"})
    assert "broker pid %d: no such process" % gone.pid in caplog.text


def test_the_pid_file_is_read_at_each_reload(pki, pw_broker, station, clock, bystander,
                                             tmp_path):
    pid_file = tmp_path / "mosquitto.pid"
    pid_file.write_text("%d\n" % pw_broker.proc.pid)
    passwords = bsm.MosquittoPasswords(pw_broker.password_path, pid_file=pid_file)
    _, _, (status, doc) = _release_with(pki, station, clock, passwords, "dev-pidfile")
    assert status == 200 and doc["status"] == "approved"
    assert wait_for_login(pki, pw_broker, "dev-pidfile", doc["mqtt"]["password"]) == 0
    pid_file.write_text("%d\n" % bystander.pid)      # the broker "restarted" elsewhere
    _, _, answer = _release_with(pki, station, clock, passwords, "dev-pidfile-2")
    assert answer == (503, {"status": "unavailable"}) and bystander.poll() is None
    pid_file.write_text("garbage")
    with pytest.raises(bsm.ReloadError, match="holds 'garbage', not a pid"):
        passwords.reload()


def test_cli_revoke_with_a_stale_pid_removes_the_password_and_says_the_broker_was_not_reloaded(
        pki, pw_broker, station, clock, bystander):
    enrol(pki, station, clock, "dev-revoke-stale")
    station.store.set_setting("mosquitto_pid", str(bystander.pid))
    done = cli(station.store.dir, "revoke", "dev-revoke-stale")
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "not mosquitto" in done.stderr and "not reloaded" in done.stderr
    assert bystander.poll() is None
    assert "dev-revoke-stale:" not in pw_broker.password_path.read_text()


def test_confirm_with_a_huge_or_boolean_request_id_is_unknown(pki, station):
    for rid in (2**70, -1, True, 0):
        assert post(pki, station.port, "/v1/auth/confirm", {
            "request_id": rid, "device_id": "d", "nonce": "0" * 32}) == (
            404, {"status": "unknown"})
