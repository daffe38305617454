"""The validated configuration as the app keeps it, without the validator.

config.py holds the schema and every check (the biggest module in RAM); it is needed once,
at boot. ``load`` imports it, validates, then forgets it: what stays resident is the Config
(one per section inside it) defined here, whose method keeps only this small module's globals
alive (a function keeps its module's globals; a Config built by config.py's classes would keep
the whole validator).

Example::

    from securenode import settings
    cfg = settings.load("config.json")   # raises ConfigError naming the file and field
    cfg.mqtt.port                        # -> 8883
"""

import gc
import sys

from micropython import const


class ConfigError(Exception):
    """config.json is unreadable or wrong.

    str(e) names the file, the dotted field and what was found; e.field is the
    dotted field name ("mqtt.port"), or None when the file as a whole is wrong.
    """

    def __init__(self, message, field=None):
        super().__init__(message)
        self.field = field


class Config:
    """Validated fields as attributes: cfg.device_id, and a Config per section (cfg.mqtt.port).

    Nothing but the values is kept (no field list, no section name): this stays resident on a
    board for as long as it runs.
    """

    def __repr__(self):
        # Never the WiFi key or a token (tls.key, a file name, too): repr may reach a log line.
        parts = []
        for k, v in sorted(self.__dict__.items()):
            hidden = k == "key" or k == "token"  # comparisons: no tuple kept resident
            parts.append("%s=%s" % (k, "<hidden>" if hidden else repr(v)))
        return "Config(%s)" % ", ".join(parts)


_early = None  # (path, Config or ConfigError) from preload(), handed out once by load()
# From preload() until the app has made its long-lived TLS pieces (app.py's warm-up turns it
# off), the heap is collected after every 4 KB allocated: the validator, the imports, the
# SSLContext and the first link then land in a compact heap instead of among garbage that
# later leaves holes (MQTTS from ROMFS ran at 68K without, 59K with).
_BOOT_GC_BYTES = const(4096)


def preload(path="config.json"):
    """Validate now, before the app's modules are loaded (main.py calls this first).

    The validator's import is the biggest transient of a boot; on a heap that holds only
    the interpreter it fits where it would not beside the app. Nothing is reported here:
    load() returns the Config, or raises the ConfigError, when the app asks, so the boot
    event still comes first.
    """
    global _early
    if hasattr(gc, "threshold"):  # CPython's gc (the simulator) has none
        gc.threshold(_BOOT_GC_BYTES)
    try:
        _early = (path, load(path))
    except ConfigError as exc:
        _early = (path, exc)


def load(path="config.json"):
    """Validate ``path`` with config.py, then unload the validator; return the Config
    (the sections of transports other than cfg.transport are None)."""
    global _early
    if _early is not None and _early[0] == path:
        result = _early[1]
        _early = None
        if isinstance(result, ConfigError):
            raise result
        return result
    from securenode import config

    try:
        cfg = config.load(path)
    finally:
        forget("securenode.config")
    # Another transport's section is never read once validated: not kept (~0.3 KB each).
    if cfg.transport != "jsonl":
        cfg.jsonl = None
    if cfg.transport != "wss" and cfg.transport != "mqtt_wss":
        cfg.wss = None
    return cfg


def forget(name):
    """Drop a module used once (sys.modules and its package's attribute), then collect."""
    sys.modules.pop(name, None)
    package, _, short = name.rpartition(".")
    pkg = sys.modules.get(package)
    if pkg is not None:
        try:
            delattr(pkg, short)
        except (AttributeError, KeyError):
            pass  # MicroPython does not always bind a submodule on its package
    gc.collect()
