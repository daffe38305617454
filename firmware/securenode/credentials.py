"""The main loop's side of provisioning: MQTT credentials from the base station.

Only a board configured with a ``provisioning`` section loads this module (a certificate
board never does, so none of this sits in its RAM). Before each connect the loop calls
``load`` (False: none yet); its provisioning step is ``request``; after a connect it calls
``discard`` (failed) or ``accept`` (succeeded). The credentials live on flash and in
``node.creds``; the provisioning client (provision, https_client, provision_codec: ~25 KB)
is loaded for each exchange with the base station and dropped after it.

Example (what app.Node.connect does)::

    from securenode import credentials
    if not credentials.load(node):
        ...   # go to the provisioning state: credentials.request(node) -> True once given
"""

from securenode import settings
from securenode.events import emit, error
from securenode.net import NetError
from securenode.pinned_tls import TlsError


def _unload():
    # The provisioning client is used at most a few times in a board's life: load it for
    # that, then give its ~25 KB back to the readings.
    for name in ("securenode.provision", "securenode.https_client",
                 "securenode.provision_codec"):
        settings.forget(name)


def _ca_ders(cfg):
    ders = []
    for path in cfg.tls.ca:
        with open(path, "rb") as f:
            ders.append(f.read())
    return ders


def _use(node, creds):
    m = node.cfg.mqtt
    m.host, m.port, m.user, m.password = (creds["host"], creds["port"], creds["user"],
                                          creds["password"])
    node.cfg.tls.server_hostname = creds["server_hostname"]
    node.creds = creds
    node.tls = None  # rebuilt for the broker's host name


def load(node):
    """Put the stored credentials to use; False when the board has none yet.

    A board with a client certificate logs in with it and needs none: True.
    """
    if not hasattr(node, "creds"):
        node.creds = None  # set here, the first call: the other functions come after it
    if node.cfg.tls.cert is not None or node.creds:
        return True
    from securenode import provision as client

    creds = client.load_credentials(node.cfg.provisioning.credentials)
    _unload()
    if creds is None:
        return False
    _use(node, creds)
    return True


def request(node):
    """Ask the base station for credentials and store them; True once given.

    While a person decides, node.idle keeps the readings on cadence.
    """
    from securenode import provision as client
    from securenode.https_client import HttpError

    try:
        creds = client.Provisioner(node.cfg, _ca_ders(node.cfg), node.idle).obtain()
        client.save_credentials(node.cfg.provisioning.credentials, creds)
    except (client.ProvisionError, TlsError, HttpError, NetError, OSError) as exc:
        # OSError: the link broke mid-exchange (reset, read timeout); ask again later.
        error(getattr(exc, "kind", None) or getattr(exc, "step", None) or "provision_io",
              str(exc))
        return False
    finally:
        _unload()
    _use(node, creds)
    emit("provisioned", broker="%s:%d" % (creds["host"], creds["port"]), user=creds["user"])
    return True


def discard(node, exc):
    """After a connect failed with exc: discard credentials that once worked and are now
    refused (revoked on the base station), so that the board asks again. Fresh ones are
    kept: the broker may not have re-read its password file yet."""
    creds = node.creds
    if (creds and creds.get("confirmed")
            and getattr(exc, "kind", None) == "connack_refused"):
        from securenode import provision as client

        client.forget_credentials(node.cfg.provisioning.credentials)
        _unload()
        node.creds = None
        emit("provision_forgotten", reason="broker refused the stored credentials")


def accept(node):
    """After a connect: the broker took the credentials, so tell the base station, which
    shows the device "confirmed" (retried after the next connect if it cannot be told now)."""
    creds = node.creds
    if not creds or creds.get("confirmed"):
        return
    from securenode import provision as client
    from securenode.https_client import HttpError

    try:
        client.Provisioner(node.cfg, _ca_ders(node.cfg)).confirm(creds)
    except (client.ProvisionError, TlsError, HttpError, NetError, OSError) as exc:
        error("provision_confirm", str(exc))
        return
    finally:
        _unload()
    creds["confirmed"] = True
    try:
        client.save_credentials(node.cfg.provisioning.credentials, creds)
    except OSError as exc:
        # Confirmed all the same (in RAM); after a reboot the board simply confirms again.
        error("provision_store", "cannot record the confirmation on flash (%s)" % exc)
    emit("provision_confirmed", peer="%s:%d" % (creds["base"][0], creds["base"][1]))
