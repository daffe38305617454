"""The base station's side of Mosquitto: per-device passwords, the reload, reserved ids.

    passwords = MosquittoPasswords("/etc/mosquitto/passwd",
                                   pid_file="/run/mosquitto/mosquitto.pid",
                                   acl_file="/etc/mosquitto/acl")
    password = passwords.add("board-7")      # hashed into the file, broker reloaded
    passwords.reserved_ids()                 # {"collector", ...}: never given to a device
"""

import errno
import logging
import os
import re
import secrets
import signal
import subprocess

from .store import BaseStationError

BROKER_COMM = "mosquitto"
# An ACL line naming one identity: "user collector" (the pattern lines name nobody).
_ACL_USER_RE = re.compile(r"^\s*user\s+(\S+)\s*$", re.MULTILINE)

log = logging.getLogger("basestation")


class ReloadError(BaseStationError):
    """The password file changed but the broker could not be told to re-read it."""


class MosquittoPasswords:
    """Per-device passwords in Mosquitto's password file, via Debian's ``mosquitto_passwd``.

    The password goes to mosquitto_passwd on stdin (never on a command line, where ``ps``
    shows it); the file keeps only its salted PBKDF2-SHA512 hash. SIGHUP makes the broker
    re-read the file. The broker's pid is read from ``pid_file`` at every reload (a broker
    restarted since still gets it) or given as ``mosquitto_pid``; either way the signal goes
    only to a process whose name is mosquitto, through a pidfd, so a pid that now belongs to
    another program is never signalled.
    """

    def __init__(self, password_file, mosquitto_pid=None, tool="mosquitto_passwd",
                 pid_file=None, acl_file=None):
        self.password_file = str(password_file)
        self.mosquitto_pid = int(mosquitto_pid) if mosquitto_pid else None
        self.pid_file = str(pid_file) if pid_file else None
        self.acl_file = str(acl_file) if acl_file else None
        self.tool = tool

    def add(self, user):
        password = secrets.token_urlsafe(24)
        self._run([self.tool, self.password_file, user], "%s\n%s\n" % (password, password))
        self.reload()
        return password

    def remove(self, user):
        self._run([self.tool, "-D", self.password_file, user], "")
        self.reload()

    def reserved_ids(self):
        """User names the broker's ACL grants rights of their own (subscribers, collector)."""
        if not self.acl_file:
            return set()
        try:
            with open(self.acl_file, encoding="utf-8", errors="replace") as acl:
                return set(_ACL_USER_RE.findall(acl.read(1 << 20)))
        except OSError as exc:
            raise BaseStationError("cannot read the broker's ACL %s: %s"
                                   % (self.acl_file, exc.strerror or exc)) from None

    def broker_pid(self):
        """The pid to signal: from the pid file (read now) or the fixed one; None if neither."""
        if not self.pid_file:
            return self.mosquitto_pid
        try:
            with open(self.pid_file, encoding="ascii", errors="replace") as f:
                text = f.read(32).strip()
        except OSError as exc:
            raise ReloadError("broker pid file %s: %s; the broker was not reloaded"
                                   % (self.pid_file, exc.strerror or exc)) from None
        if not text.isdigit() or not 0 < int(text) < 2**22:
            raise ReloadError("broker pid file %s holds %r, not a pid; the broker was "
                                   "not reloaded" % (self.pid_file, text[:16]))
        return int(text)

    def reload(self):
        """SIGHUP the broker if the pid is a live mosquitto; BaseStationError otherwise."""
        pid = self.broker_pid()
        if pid is None:
            return
        try:
            # The pidfd pins this very process: if the pid is reused after the name check,
            # the signal fails instead of reaching the newcomer.
            pidfd = os.pidfd_open(pid)
        except OSError as exc:
            raise ReloadError("broker pid %d: %s; the broker was not reloaded"
                                   % (pid, _no_process(exc))) from None
        try:
            comm = _comm(pid)
            if comm != BROKER_COMM:
                raise ReloadError("pid %d is %r, not %s (stale --mosquitto-pid?); it was "
                                       "not signalled and the broker was not reloaded"
                                       % (pid, comm, BROKER_COMM))
            signal.pidfd_send_signal(pidfd, signal.SIGHUP)
        except OSError as exc:
            raise ReloadError("broker pid %d: %s; the broker was not reloaded"
                                   % (pid, _no_process(exc))) from None
        finally:
            os.close(pidfd)

    def _run(self, argv, stdin):
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True, text=True,
                                  timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BaseStationError("%s could not run: %s" % (argv[0], exc)) from None
        if proc.returncode != 0:
            # mosquitto_passwd never echoes the password; its message is safe to show.
            raise BaseStationError("%s failed (%d): %s" % (argv[0], proc.returncode,
                                                           proc.stderr.strip()[-200:]))


def _comm(pid):
    try:
        with open("/proc/%d/comm" % pid, encoding="utf-8", errors="replace") as f:
            return f.read(64).strip()
    except OSError:
        return "gone"


def _no_process(exc):
    return "no such process" if exc.errno == errno.ESRCH else (exc.strerror or str(exc))


def revoke(store, passwords, device_id, now):
    """Remove the device's MQTT credentials; its next connection is refused."""
    devices = {d["device_id"]: d for d in store.devices()}
    if device_id not in devices or devices[device_id]["status"] == "revoked":
        raise BaseStationError("device %s has no credentials to revoke" % device_id)
    try:
        passwords.remove(device_id)
    except ReloadError as exc:
        # The password is out of the file; only the reload failed. Record the revocation
        # and say plainly that the broker still has to re-read its file.
        store.mark_revoked(device_id, now)
        raise BaseStationError("device %s removed from %s, but %s" % (
            device_id, passwords.password_file, exc)) from None
    store.mark_revoked(device_id, now)
    log.info("device %s revoked", device_id)
