"""SecureNode base station: a person approves a board, the board gets its MQTT credentials.

A board with only WiFi credentials asks over HTTPS (certificate from tools/certs.py, which
the board checks against its pinned CA); the operator sees the request, compares the
6-digit code the board shows with the one on the page, and allows or denies it, from the
command line or from the web page. On Allow, when the board next asks (from the same
address, with the same nonce, within 60 s), the base station creates a per-device password
in Mosquitto's password file (hashed by ``mosquitto_passwd``, reloaded with SIGHUP) and
hands it out once. No password is stored in plain text anywhere; none is logged.

One module per job: ``store`` (SQLite state), ``broker`` (Mosquitto's password file, reload,
reserved ids), ``frontend`` (connections: caps, TLS handshake timeout, whole-request deadline,
a few workers for complete requests), ``login`` (the bound on password guessing),
``server`` (the device API, the page's routes, the beacon), ``page`` (the operator's HTML),
``cli`` (``python -m tools.basestation --help``).

    with BaseStation(state_dir, chain_pem, key_pem, ca_der, mqtt=("127.0.0.1", 8884,
                     "localhost"), passwords=MosquittoPasswords(path, pid_file=pid_path)) as bs:
        bs.port      # HTTPS on 127.0.0.1
"""

from .broker import MosquittoPasswords, ReloadError, revoke
from .cli import main
from .frontend import Limits
from .login import LoginGuard
from .server import MAX_BODY_BYTES, BaseStation
from .store import (MAX_PENDING, MAX_PENDING_PER_SOURCE, PENDING_TTL_S, RELEASE_WINDOW_S,
                    BaseStationError, Store, check_password, comparison_code, hash_password)

__all__ = ["BaseStation", "BaseStationError", "Limits", "LoginGuard", "MAX_BODY_BYTES",
           "MAX_PENDING", "MAX_PENDING_PER_SOURCE", "MosquittoPasswords", "PENDING_TTL_S",
           "RELEASE_WINDOW_S", "ReloadError", "Store", "check_password", "comparison_code",
           "hash_password", "main", "revoke"]
