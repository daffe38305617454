"""The operator page in a real headless browser (Debian's chromium, driven by Playwright):
log in, see the pending board with its comparison code, click Allow, and the board connects;
without a login there is no page and no decision; a forged cross-site POST is refused."""

import http.server
import threading
import time
from pathlib import Path

import pytest

from provision_helpers import ask, provisioning_config, start_base_station

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync",
                 "--disable-quic"]
OPERATOR_PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is not installed: run `make` (it apt-installs it)",
                    pytrace=False)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def station(pki, pw_broker, tmp_path):
    bs = start_base_station(pki, pw_broker, tmp_path / "state")
    bs.store.set_operator_password(OPERATOR_PASSWORD)
    yield bs
    bs.stop()


@pytest.fixture
def context(browser):
    # The base station's certificate chains to our test CA, which chromium does not know.
    ctx = browser.new_context(ignore_https_errors=True)
    yield ctx
    ctx.close()


class AttackerSite:
    """Another origin (http://localhost:PORT) serving a form that posts to the base station."""

    def __init__(self, target, request_id):
        page = ("<!doctype html><form id='f' method='post' action='%s/decide'>"
                "<input name='request' value='%d'><input name='action' value='allow'>"
                "<input name='csrf' value='guessed'><button id='go'>win a prize</button>"
                "</form>" % (target, request_id)).encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://localhost:%d/" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def login(page, base):
    page.goto(base + "/")
    assert page.url == base + "/login"
    page.fill("#password", OPERATOR_PASSWORD)
    page.click("#login")
    page.wait_for_url(base + "/")


def test_operator_logs_in_sees_the_board_and_its_code_clicks_allow_and_the_board_connects(
        pki, station, context, launch):
    board = launch("prov-web", 1, config=provisioning_config(station.port), clock="host")
    shown = board.wait_for("provision_code")
    base = "https://127.0.0.1:%d" % station.port
    page = context.new_page()
    login(page, base)
    row = page.locator("tr.pending[data-device='prov-web']")
    assert row.count() == 1
    cells = row.locator("td").all_inner_texts()
    assert cells[:6] == [str(shown["request_id"]), "prov-web", "prov-web", "127.0.0.1",
                         cells[4], shown["code"]]
    assert time.strftime("%Y-%m-%d", time.gmtime()) in cells[4]
    page.click("#allow-%d" % shown["request_id"])
    page.wait_for_url(base + "/")
    board.wait_for("mqtt_connected", timeout=30)
    board.wait_for("provision_confirmed")
    page.reload()
    status = page.locator("tr.device[data-device='prov-web'] td.status").inner_text()
    assert status == "confirmed"
    cookie = [c for c in context.cookies() if c["name"] == "bs_session"][0]
    assert cookie["httpOnly"] and cookie["secure"] and cookie["sameSite"] == "Strict"


def test_without_login_there_is_no_page_and_no_decision(pki, station, context):
    rid, _ = ask(pki, station.port, "dev-anon")
    base = "https://127.0.0.1:%d" % station.port
    page = context.new_page()
    page.goto(base + "/")
    assert page.url == base + "/login"
    assert page.locator("tr.pending").count() == 0 and "dev-anon" not in page.content()
    response = context.request.post(base + "/decide", form={
        "request": str(rid), "action": "allow", "csrf": "x"}, headers={"Origin": base})
    assert response.status == 403
    assert [r["status"] for r in station.store.requests() if r["id"] == rid] == ["pending"]


def test_forged_cross_site_post_is_refused_even_while_logged_in(pki, station, context):
    rid, _ = ask(pki, station.port, "dev-forged")
    base = "https://127.0.0.1:%d" % station.port
    page = context.new_page()
    login(page, base)
    with AttackerSite(base, rid) as attacker:
        page.goto(attacker.url)
        with page.expect_response(lambda r: r.url.endswith("/decide")) as answer:
            page.click("#go")
        assert answer.value.status == 403
    assert [r["status"] for r in station.store.requests() if r["id"] == rid] == ["pending"]
    # The operator's own page still works: the refusal was about the forgery, not the session.
    page.goto(base + "/")
    assert page.locator("tr.pending[data-device='dev-forged']").count() == 1
