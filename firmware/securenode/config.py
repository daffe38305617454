# Validate config.json once, at boot: every later module trusts the Config it
# returns. Every problem is a ConfigError naming the file, the dotted field and
# what was found, so a typo on a board is fixed from one line of output.
import json
import os

from micropython import const

from securenode.settings import Config, ConfigError, Section  # noqa: F401 (ConfigError: API)

_MAX_GOT_CHARS = const(40)
_TIMEOUT_MAX_MS = const(600000)
_OUTBOX_MAX_RECORD = const(512)  # a reading is ~100 bytes; outbox.Outbox(max_record=...)


# The schema as data: (section, required, fields); a field is (name, kind,
# default, arg). kind picks the check in _check(); a default of _REQUIRED
# means the field must be present, None means "derived in _cross_checks".
_REQUIRED = "required"
# Required unless the board has a provisioning section: a base station supplies it then.
_UNLESS_PROVISIONED = "unless provisioned"

# Kinds: "int" (arg (lo, hi)), "num" (arg (lo, hi), int or float), "bool",
# "name" (arg max length; A-Z a-z 0-9 _ -), "host", "str" (arg max length),
# "secret" (arg max length, never quoted), "file", "files" (one or more names).
_SECTIONS = (
    ("wifi", True, (
        ("ssid", "str", _REQUIRED, 32),
        ("key", "secret", "", 64),
        ("timeout_ms", "int", 10000, (1, _TIMEOUT_MAX_MS)),
    )),
    ("ntp", False, (
        ("host", "host", "pool.ntp.org", None),
        ("timeout_ms", "int", 3000, (1, _TIMEOUT_MAX_MS)),
    )),
    ("mqtt", _UNLESS_PROVISIONED, (
        ("host", "host", _UNLESS_PROVISIONED, None),
        ("port", "int", 8883, (1, 65535)),
        # MQTT's keepalive is a 16-bit field; 0 turns it off.
        ("keepalive_s", "int", 60, (0, 65535)),
        ("client_id", "name", None, 64),
        # QoS 1 PUBLISHes awaiting PUBACK at once: a backlog drains this many per round trip
        # (app.py). Bounded: each is a packet id and a RAM slot; 32 at RTT 100 ms already
        # drains ~320 readings/s, more than a board samples.
        ("inflight", "int", 8, (1, 32)),
    )),
    ("tls", True, (
        ("ca", "files", _REQUIRED, None),
        ("cert", "file", _UNLESS_PROVISIONED, None),
        ("key", "file", _UNLESS_PROVISIONED, None),
        ("server_hostname", "host", None, None),
        ("allow_unverified", "bool", False, None),
    )),
    ("timeouts_ms", False, (
        ("dns", "int", 5000, (1, _TIMEOUT_MAX_MS)),
        ("connect", "int", 5000, (1, _TIMEOUT_MAX_MS)),
        ("handshake", "int", 10000, (1, _TIMEOUT_MAX_MS)),
        ("io", "int", 5000, (1, _TIMEOUT_MAX_MS)),
    )),
    ("sample", False, (
        ("interval_ms", "int", 1000, (10, 86400000)),
        ("adc_pin", "int", 34, (0, 48)),
        ("volts_per_count", "num", 0.0125, (1e-6, 100)),
        # A window must hold at least one full cycle at 45 Hz to find a period.
        ("window_ms", "int", 100, (25, 1000)),
        # Each sample costs 6 bytes of RAM (u16 value + u32 time).
        ("samples", "int", 200, (16, 2000)),
        ("volts_min", "num", 90, (0, 1000)),
        ("volts_max", "num", 264, (0, 1000)),
        ("hz_min", "num", 45, (1, 1000)),
        ("hz_max", "num", 65, (1, 1000)),
    )),
    ("backoff", False, (
        ("min_ms", "int", 500, (1, 3600000)),
        ("max_ms", "int", 30000, (1, 3600000)),
    )),
    ("run", False, (
        # 0 = forever; N > 0: stop cleanly after N acknowledged readings.
        ("max_readings", "int", 0, (0, 1000000000)),
    )),
    # Zero-typing provisioning (securenode/provision.py): with no MQTT credentials, ask the
    # base station; it is trusted only through tls.ca, never through discovery.
    ("provisioning", False, (
        # No host: listen for the base station's UDP beacon (a hint; TLS decides trust).
        ("host", "host", None, None),
        ("port", "int", 8443, (1, 65535)),
        ("server_hostname", "host", None, None),
        ("beacon_port", "int", 48443, (1, 65535)),
        ("beacon_wait_ms", "int", 10000, (1, _TIMEOUT_MAX_MS)),
        ("name", "str", None, 64),
        ("poll_min_ms", "int", 1000, (100, 30000)),
        # Polls must come well inside the base station's 60 s release window.
        ("poll_max_ms", "int", 10000, (100, 30000)),
        # How long one request waits for the operator before the board asks anew.
        ("wait_s", "int", 300, (1, 86400)),
        ("credentials", "str", "mqtt_credentials.json", 64),
        ("max_response_bytes", "int", 2048, (256, 16384)),
    )),
    # Used when transport is "wss" (readings to an ingest endpoint) or "mqtt_wss".
    ("wss", False, (
        ("host", "host", None, None),
        ("port", "int", 443, (1, 65535)),
        ("path", "str", None, 256),
        ("token", "secret", "", 512),
        # Largest message accepted from the peer; checked before any buffer grows.
        ("max_message_bytes", "int", 4096, (125, 1048576)),
    )),
    # The outbox on flash (outbox.py): readings wait there until acknowledged.
    ("outbox", False, (
        ("budget_bytes", "int", 16384, (1024, 16777216)),
        ("segment_bytes", "int", 2048, (_OUTBOX_MAX_RECORD + 10, 1048576)),
        # Acks kept in RAM before the head is written to flash: fewer writes, and at most
        # ack_batch - 1 resends after a power cut (storage dedupes them by (device, seq)).
        ("ack_batch", "int", 8, (1, 1000)),
        # Backlog readings sent between two samples: a backlog never starves sampling.
        ("send_burst", "int", 8, (1, 1000)),
    )),
    # Used when transport is "jsonl": one reading per line over pinned TLS, one ack line back.
    ("jsonl", False, (
        ("host", "host", None, None),
        ("port", "int", 8884, (1, 65535)),
    )),
)

_TRANSPORTS = ("mqtts", "wss", "mqtt_wss", "jsonl")

# ADC conversions take tens of microseconds; closer spacing than this cannot be met.
_MIN_SAMPLE_PERIOD_US = const(100)


def load(path="config.json"):
    """Read, parse and validate a config file; raise ConfigError on any problem.

    File names in the tls section are resolved next to the config file.

    >>> cfg = load("config.json")
    >>> cfg.mqtt.host, cfg.mqtt.port, cfg.tls.ca
    ('localhost', 8883, ['ca.der'])
    """
    source = _basename(path)
    # stat first: errno values differ between ports, a failed stat does not.
    try:
        os.stat(path)
    except OSError:
        raise ConfigError("%s: file not found" % path)
    try:
        with open(path) as f:
            text = f.read()
    except OSError as e:
        raise ConfigError("%s: cannot read file (%r)" % (path, e))
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ConfigError("%s: not valid JSON (%s)" % (source, e))
    return validate(data, source, _dirname(path))


def validate(data, source="config.json", base_dir=""):
    """Check a parsed config dict against the schema; return a Config.

    source names the file in error messages; base_dir is where tls files live.

    >>> cfg = validate({"device_id": "b1", "wifi": {"ssid": "net"},
    ...                 "mqtt": {"host": "broker"},
    ...                 "tls": {"ca": "ca.der", "cert": "d.der", "key": "k.der"}})
    >>> cfg.tls.server_hostname, cfg.backoff.max_ms
    ('broker', 30000)
    """
    if type(data) is not dict:
        raise ConfigError("%s: must be a JSON object, got %s" % (source, _show(data)))
    known = ["device_id", "transport"]
    for section in _SECTIONS:
        known.append(section[0])
    _reject_unknown(source, "", data, known)

    cfg = Config()
    if "device_id" not in data:
        raise ConfigError("%s: device_id is required" % source, "device_id")
    cfg.device_id = _check(source, "device_id", "name", data["device_id"], 64, base_dir)
    cfg.transport = data.get("transport", "mqtts")
    if cfg.transport not in _TRANSPORTS:
        raise ConfigError("%s: transport must be one of %s, got %s"
                          % (source, ", ".join(_TRANSPORTS), _show(cfg.transport)), "transport")

    provisioned = "provisioning" in data
    for name, required, fields in _SECTIONS:
        raw = data.get(name)
        if raw is None:
            if required is True or (required is _UNLESS_PROVISIONED and not provisioned):
                raise ConfigError("%s: %s is required" % (source, name), name)
            raw = {}
        elif type(raw) is not dict:
            raise ConfigError("%s: %s must be an object, got %s"
                              % (source, name, _show(raw)), name)
        _reject_unknown(source, name + ".", raw, [f[0] for f in fields])
        section = Section(name)
        for field, kind, default, arg in fields:
            dotted = name + "." + field
            if field in raw:
                value = _check(source, dotted, kind, raw[field], arg, base_dir)
            elif default is _REQUIRED or (default is _UNLESS_PROVISIONED and not provisioned):
                raise ConfigError("%s: %s is required" % (source, dotted), dotted)
            elif default is _UNLESS_PROVISIONED:
                value = None
            else:
                value = default
            setattr(section, field, value)
            section._fields.append(field)
        setattr(cfg, name, section)
    if not provisioned:
        cfg.provisioning = None

    _cross_checks(source, cfg)
    return cfg


def _cross_checks(source, cfg):
    # Defaults that depend on other fields, then rules spanning fields.
    if cfg.mqtt.client_id is None:
        cfg.mqtt.client_id = cfg.device_id
    _wss_checks(source, cfg)
    _outbox_checks(source, cfg)
    if cfg.tls.server_hostname is None:
        cfg.tls.server_hostname = cfg.mqtt.host
    p = cfg.provisioning
    if p is not None:
        if p.server_hostname is None:
            p.server_hostname = p.host
        if p.name is None:
            p.name = cfg.device_id
        if p.poll_max_ms < p.poll_min_ms:
            raise ConfigError("%s: provisioning.poll_max_ms must be >= provisioning.poll_min_ms "
                              "(%d), got %d" % (source, p.poll_min_ms, p.poll_max_ms),
                              "provisioning.poll_max_ms")
        if not _is_name(p.credentials.replace(".", "_")):
            raise ConfigError("%s: provisioning.credentials must be a plain file name, got %s"
                              % (source, _show(p.credentials)), "provisioning.credentials")
        if (cfg.tls.cert is None) != (cfg.tls.key is None):
            missing = "tls.key" if cfg.tls.key is None else "tls.cert"
            raise ConfigError("%s: %s is required with %s" % (
                source, missing, "tls.cert" if missing == "tls.key" else "tls.key"), missing)
    if cfg.backoff.max_ms < cfg.backoff.min_ms:
        raise ConfigError("%s: backoff.max_ms must be >= backoff.min_ms (%d), got %d"
                          % (source, cfg.backoff.min_ms, cfg.backoff.max_ms), "backoff.max_ms")
    s = cfg.sample
    if s.window_ms * 1000 // s.samples < _MIN_SAMPLE_PERIOD_US:
        raise ConfigError("%s: sample.samples must leave >= %d us between samples "
                          "(sample.window_ms %d), got %d"
                          % (source, _MIN_SAMPLE_PERIOD_US, s.window_ms, s.samples),
                          "sample.samples")
    if s.interval_ms < s.window_ms:
        raise ConfigError("%s: sample.interval_ms must be >= sample.window_ms (%d), got %d"
                          % (source, s.window_ms, s.interval_ms), "sample.interval_ms")
    if s.volts_max <= s.volts_min:
        raise ConfigError("%s: sample.volts_max must be > sample.volts_min (%s), got %s"
                          % (source, _show(s.volts_min), _show(s.volts_max)), "sample.volts_max")
    if s.hz_max <= s.hz_min:
        raise ConfigError("%s: sample.hz_max must be > sample.hz_min (%s), got %s"
                          % (source, _show(s.hz_min), _show(s.hz_max)), "sample.hz_max")


def _wss_checks(source, cfg):
    w = cfg.wss
    if w.path is None:
        w.path = "/ingest/" + cfg.device_id if cfg.transport == "wss" else "/mqtt"
    # The path and token go into HTTP header lines: no spaces or control characters.
    if w.path[0] != "/" or not _is_visible(w.path):
        raise ConfigError("%s: wss.path must start with / and hold no spaces or control "
                          "characters, got %s" % (source, _show(w.path)), "wss.path")
    if w.token and not _is_visible(w.token):
        raise ConfigError("%s: wss.token must hold no spaces or control characters (value "
                          "not shown)" % source, "wss.token")
    if cfg.transport not in ("wss", "mqtt_wss"):
        return
    if w.host is None:
        raise ConfigError("%s: wss.host is required for transport %s"
                          % (source, cfg.transport), "wss.host")
    if cfg.transport == "wss" and not w.token:
        raise ConfigError("%s: wss.token is required for transport wss" % source, "wss.token")
    if cfg.tls.server_hostname is None:
        cfg.tls.server_hostname = w.host


def _outbox_checks(source, cfg):
    o = cfg.outbox
    o.max_record = _OUTBOX_MAX_RECORD
    if o.budget_bytes < 2 * o.segment_bytes:
        raise ConfigError("%s: outbox.budget_bytes must be >= 2 * outbox.segment_bytes (%d), "
                          "got %d" % (source, 2 * o.segment_bytes, o.budget_bytes),
                          "outbox.budget_bytes")
    if cfg.transport == "jsonl":
        if cfg.jsonl.host is None:
            raise ConfigError("%s: jsonl.host is required for transport jsonl" % source,
                              "jsonl.host")
        if cfg.tls.server_hostname is None:
            cfg.tls.server_hostname = cfg.jsonl.host


def _is_visible(s):
    for c in s:
        if not ("!" <= c <= "~"):
            return False
    return True


def _reject_unknown(source, prefix, raw, known):
    # A typo ("mqtt.prot") must fail loudly rather than silently use the default.
    for key in raw:
        if key not in known:
            raise ConfigError("%s: unknown field %s%s (expected one of: %s)"
                              % (source, prefix, key, ", ".join(known)), prefix + key)


def _check(source, dotted, kind, value, arg, base_dir):
    t = type(value)
    if kind == "int":
        # JSON true/false are not numbers here, though Python would allow them.
        if t is int and arg[0] <= value <= arg[1]:
            return value
        raise ConfigError("%s: %s must be an integer %d..%d, got %s"
                          % (source, dotted, arg[0], arg[1], _show(value)), dotted)
    if kind == "num":
        if (t is int or t is float) and arg[0] <= value <= arg[1]:
            return value
        raise ConfigError("%s: %s must be a number %s..%s, got %s"
                          % (source, dotted, _show(arg[0]), _show(arg[1]), _show(value)), dotted)
    if kind == "bool":
        if t is bool:
            return value
        raise ConfigError("%s: %s must be true or false, got %s"
                          % (source, dotted, _show(value)), dotted)
    if kind == "name":
        if t is str and 1 <= len(value) <= arg and _is_name(value):
            return value
        raise ConfigError("%s: %s must be 1..%d characters of A-Z a-z 0-9 _ -, got %s"
                          % (source, dotted, arg, _show(value)), dotted)
    if kind == "host":
        if t is str and 1 <= len(value) <= 253 and _is_host(value):
            return value
        raise ConfigError("%s: %s must be a host name or IP address, got %s"
                          % (source, dotted, _show(value)), dotted)
    if kind == "str":
        if t is str and 1 <= len(value) <= arg:
            return value
        raise ConfigError("%s: %s must be a string of 1..%d characters, got %s"
                          % (source, dotted, arg, _show(value)), dotted)
    if kind == "secret":
        if t is str and len(value) <= arg:
            return value
        # Say what is wrong without quoting it: the value may be the real key.
        raise ConfigError("%s: %s must be a string of at most %d characters (value not shown)"
                          % (source, dotted, arg), dotted)
    if kind == "file":
        return _check_file(source, dotted, value, base_dir)
    # kind == "files": one name or a non-empty list of names.
    if t is str:
        value = [value]
    elif t is not list or not value:
        raise ConfigError("%s: %s must be a file name or a non-empty list of file names, got %s"
                          % (source, dotted, _show(value)), dotted)
    paths = []
    for i in range(len(value)):
        paths.append(_check_file(source, "%s[%d]" % (dotted, i), value[i], base_dir))
    return paths


def _check_file(source, dotted, value, base_dir):
    if type(value) is not str or not value:
        raise ConfigError("%s: %s must be a file name, got %s"
                          % (source, dotted, _show(value)), dotted)
    path = value
    if base_dir and value[0] != "/":
        path = base_dir + value if base_dir[-1] == "/" else base_dir + "/" + value
    try:
        size = os.stat(path)[6]
    except OSError:
        # Any stat failure on flash means the file is not usable; errno values
        # differ between ports, so they are not decoded here.
        raise ConfigError('%s: %s: file "%s" not found' % (source, dotted, value), dotted)
    if size == 0:
        raise ConfigError('%s: %s: file "%s" is empty' % (source, dotted, value), dotted)
    return path


def _is_name(s):
    for c in s:
        if not ("a" <= c <= "z" or "A" <= c <= "Z" or "0" <= c <= "9" or c == "_" or c == "-"):
            return False
    return True


def _is_host(s):
    # DNS names, IPv4 and IPv6 literals; no spaces, schemes or ports.
    for c in s:
        if not ("a" <= c <= "z" or "A" <= c <= "Z" or "0" <= c <= "9" or c in ".-_:"):
            return False
    return s[0] != "." and s[0] != "-"


def _show(value):
    # JSON's vocabulary, since that is what the user wrote.
    t = type(value)
    if value is None:
        return "null"
    if t is bool:
        return "true" if value else "false"
    if t is str:
        if len(value) > _MAX_GOT_CHARS:
            value = value[:_MAX_GOT_CHARS] + "..."
        return '"%s"' % value
    if t is list:
        return "a list"
    if t is dict:
        return "an object"
    return str(value)


def _basename(path):
    i = path.rfind("/")
    return path[i + 1:] if i >= 0 else path


def _dirname(path):
    # MicroPython has no os.path.
    i = path.rfind("/")
    if i < 0:
        return ""
    return path[:i] if i > 0 else "/"
