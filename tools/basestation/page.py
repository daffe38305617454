"""The operator's web page, as pure functions of what the store holds: no I/O here.

Everything a device sent (id, name, address) is HTML-escaped; the CSRF token rides in each
form. A request for an id that already holds credentials gets a "Replace" button instead
of "Allow"; one for a reserved id (named in the broker's ACL) gets only "Deny".

    html_text = operator_page(csrf, store.requests(now=now, status="pending"),
                              store.devices(), reserved={"collector"})
"""

import html
import time

CSP = ("default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")

_PAGE = ("<!doctype html><html><head><meta charset='utf-8'><title>%(title)s</title>"
         "<style>body{font-family:sans-serif;margin:2em}td,th{padding:.3em .8em;"
         "text-align:left}.code{font-family:monospace;font-size:1.4em}form{display:inline}"
         ".flag{color:#a40}</style></head><body>%(body)s</body></html>")


def utc(unix_s):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(unix_s))


def login_page(message=""):
    """The login form, with an optional one-line message (escaped).

        login_page("Wrong password.")
    """
    return _PAGE % {"title": "Base station login", "body": (
        "<h1>Operator login</h1>%s<form method='post' action='/login'><label>Password "
        "<input type='password' name='password' id='password' autocomplete='current-password'>"
        "</label> <button id='login'>Log in</button></form>"
        % ("<p class='error'>%s</p>" % html.escape(message) if message else ""))}


def message_page(text, back=True):
    """A short page with one escaped message: what a refused form post gets."""
    return _PAGE % {"title": "Base station", "body": "<p class='error'>%s</p>%s" % (
        html.escape(text), "<p><a href='/'>Back</a></p>" if back else "")}


def _button(csrf, request_id, action, label):
    e = html.escape
    return ("<form method='post' action='/decide'><input type='hidden' name='csrf' "
            "value='%s'><input type='hidden' name='request' value='%d'><button name="
            "'action' value='%s' id='%s-%d'>%s</button></form>"
            % (e(csrf), request_id, action, action, request_id, label))


def _request_row(csrf, r, enrolled, reserved):
    e = html.escape
    if r["device_id"] in reserved:
        flag = "reserved id (named in the broker's ACL): cannot be approved"
        actions = (("deny", "Deny"),)
    elif r["device_id"] in enrolled:
        flag = "already has credentials (%s): approving replaces them" % enrolled[r["device_id"]]
        actions = (("replace", "Replace"), ("deny", "Deny"))
    else:
        flag = ""
        actions = (("allow", "Allow"), ("deny", "Deny"))
    buttons = "".join(_button(csrf, r["id"], action, label) for action, label in actions)
    return ("<tr class='pending' data-device='%s'><td>%d</td><td>%s</td><td>%s</td>"
            "<td>%s</td><td>%s</td><td class='code'>%s</td><td class='flag'>%s</td>"
            "<td>%s</td></tr>" % (e(r["device_id"]), r["id"], e(r["device_id"]), e(r["name"]),
                                  e(r["ip"]), utc(r["asked_s"]), e(r["code"]), e(flag),
                                  buttons))


def operator_page(csrf, pending, devices, reserved=()):
    """The page an operator decides on: pending requests (flagged), then devices."""
    e = html.escape
    enrolled = {d["device_id"]: d["status"] for d in devices
                if d["status"] in ("provisioned", "confirmed")}
    rows = "".join(_request_row(csrf, r, enrolled, set(reserved)) for r in pending)
    device_rows = "".join(
        "<tr class='device' data-device='%s'><td>%s</td><td class='status'>%s</td><td>%s</td>"
        "</tr>" % (e(d["device_id"]), e(d["device_id"]), e(d["status"]), utc(d["updated_s"]))
        for d in devices)
    return _PAGE % {
        "title": "Base station",
        "body": "<h1>Devices asking to connect</h1><p>Allow a device only if the code on "
                "its console matches the code here.</p><table id='pending'><tr><th>#</th>"
                "<th>device id</th><th>name</th><th>IP</th><th>asked (UTC)</th><th>code</th>"
                "<th></th><th></th></tr>%s</table><h1>Devices</h1><table id='devices'><tr><th>"
                "device id</th><th>status</th><th>since (UTC)</th></tr>%s</table>"
                "<form method='post' action='/logout'><input type='hidden' name='csrf' "
                "value='%s'><button>Log out</button></form>"
                % (rows or "<tr><td colspan='8'>none</td></tr>", device_rows, e(csrf))}
