"""The main loop's side of provisioning: MQTT credentials from the base station.

Only a board configured with a ``provisioning`` section loads this module (a certificate
board never does, so none of this sits in its RAM). Before each connect the loop asks
``missing``; its provisioning step is ``obtain``; after a connect it reports ``refused`` or
``connected``. The credentials live on flash and in ``node.creds``; the provisioning
client (provision, https_client, provision_codec: ~25 KB) is loaded for each exchange with
the base station and dropped after it.

Example (what app.Node.connect does)::

    from securenode import credentials
    if credentials.missing(node):
        ...   # go to the provisioning state: credentials.obtain(node) -> True once given
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


def missing(node):
    """True when the board has no MQTT credentials yet; stored ones are put to use."""
    if node.cfg.tls.cert is not None or node.creds:
        return False
    from securenode import provision

    creds = provision.load_credentials(node.cfg.provisioning.credentials)
    _unload()
    if creds is None:
        return True
    _use(node, creds)
    return False


def obtain(node):
    """Ask the base station for credentials and store them; True once given.

    While a person decides, node.idle keeps the readings on cadence.
    """
    from securenode import provision
    from securenode.https_client import HttpError

    try:
        creds = provision.Provisioner(node.cfg, _ca_ders(node.cfg), node.idle).obtain()
        provision.save_credentials(node.cfg.provisioning.credentials, creds)
    except (provision.ProvisionError, TlsError, HttpError, NetError, OSError) as exc:
        # OSError: the link broke mid-exchange (reset, read timeout); ask again later.
        error(getattr(exc, "kind", None) or getattr(exc, "step", None) or "provision_io",
              str(exc))
        return False
    finally:
        _unload()
    _use(node, creds)
    emit("provisioned", broker="%s:%d" % (creds["host"], creds["port"]), user=creds["user"])
    return True


def refused(node, exc):
    """A connect failed with exc: credentials that once worked and are now refused were
    revoked on the base station, so they are forgotten and asked for again. Fresh ones are
    kept: the broker may not have re-read its password file yet."""
    creds = node.creds
    if (creds and creds.get("confirmed")
            and getattr(exc, "kind", None) == "connack_refused"):
        from securenode import provision

        provision.forget_credentials(node.cfg.provisioning.credentials)
        _unload()
        node.creds = None
        emit("provision_forgotten", reason="broker refused the stored credentials")


def connected(node):
    """The broker took the credentials: the base station shows the device "confirmed"
    once it hears so (retried after the next connect if it cannot be told now)."""
    creds = node.creds
    if not creds or creds.get("confirmed"):
        return
    from securenode import provision
    from securenode.https_client import HttpError

    try:
        provision.Provisioner(node.cfg, _ca_ders(node.cfg)).confirm(creds)
    except (provision.ProvisionError, TlsError, HttpError, NetError, OSError) as exc:
        error("provision_confirm", str(exc))
        return
    finally:
        _unload()
    creds["confirmed"] = True
    try:
        provision.save_credentials(node.cfg.provisioning.credentials, creds)
    except OSError as exc:
        # Confirmed all the same (in RAM); after a reboot the board simply confirms again.
        error("provision_store", "cannot record the confirmation on flash (%s)" % exc)
    _unload()
    emit("provision_confirmed", peer="%s:%d" % (creds["base"][0], creds["base"][1]))
