# Validate config.json once, at boot: every later module trusts the Config it
# returns. Every problem is a ConfigError naming the file, the dotted field and
# what was found, so a typo on a board is fixed from one line of output.
#
# settings.load() imports this module and drops it again, but each name it spells (a function,
# an argument, a string of 10 characters or fewer) stays interned on the board for good. So
# the schema, its kinds and its character sets are const() data (inlined where used, no name),
# one loop walks the schema instead of a helper per check, and messages are whole sentences.
# (const() of a str or tuple: MicroPython >= 1.19, micropython/micropython#8548; mpy-cross
# folds it, so a board running the .mpy never sees it.)
import json
import os

from micropython import const

from securenode.settings import Config, ConfigError  # noqa: F401 (ConfigError: API)

_MAX_GOT_CHARS = const(40)
_TIMEOUT_MAX_MS = const(600000)
_OUTBOX_MAX_RECORD = const(512)  # a reading is ~100 bytes; outbox.Outbox(max_record=...)
# ADC conversions take tens of microseconds; closer spacing than this cannot be met.
_MIN_SAMPLE_PERIOD_US = const(100)

# Field kinds: what _check() accepts.
_INT = const(0)      # arg (lo, hi)
_NUM = const(1)      # arg (lo, hi), int or float
_BOOL = const(2)
_NAME = const(3)     # arg max length; A-Z a-z 0-9 _ -
_HOST = const(4)     # a DNS name, IPv4 or IPv6 literal
_STR = const(5)      # arg max length
_SECRET = const(6)   # arg max length; never quoted in an error
_FILE = const(7)     # a non-empty file, resolved next to config.json
_FILES = const(8)    # one file name or a non-empty list of them
_ONE_OF = const(9)   # arg: the allowed strings
_KIND_MASK = const(15)
# Or-ed into a field's kind, and a section's flags: it must be present; it must be present
# unless the board has a provisioning section (a base station supplies it then).
_REQUIRED = const(16)
_UNLESS_PROVISIONED = const(32)

_NAME_CHARS = const("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_HOST_CHARS = const("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.:")

# The schema as data: (section, flags, fields); a field is (name, kind | flags, default, arg).
# The first, unnamed section is the file's top level. A default of None is derived in
# _cross_checks() (or stays None: an optional host, a field a base station supplies).
_SCHEMA = const((
    ("", _REQUIRED, (
        ("device_id", _NAME | _REQUIRED, None, 64),
        ("transport", _ONE_OF, "mqtts", ("mqtts", "wss", "mqtt_wss", "jsonl")),
    )),
    ("wifi", _REQUIRED, (
        ("ssid", _STR | _REQUIRED, None, 32),
        ("key", _SECRET, "", 64),
        ("timeout_ms", _INT, 10000, (1, _TIMEOUT_MAX_MS)),
    )),
    ("ntp", 0, (
        ("host", _HOST, "pool.ntp.org", None),
        ("timeout_ms", _INT, 3000, (1, _TIMEOUT_MAX_MS)),
    )),
    ("mqtt", _UNLESS_PROVISIONED, (
        ("host", _HOST | _UNLESS_PROVISIONED, None, None),
        ("port", _INT, 8883, (1, 65535)),
        # MQTT's keepalive is a 16-bit field; 0 turns it off.
        ("keepalive_s", _INT, 60, (0, 65535)),
        ("client_id", _NAME, None, 64),
        # QoS 1 PUBLISHes awaiting PUBACK at once: a backlog drains this many per round trip
        # (app.py). Bounded: each is a packet id and a RAM slot; 32 at RTT 100 ms already
        # drains ~320 readings/s, more than a board samples.
        ("inflight", _INT, 8, (1, 32)),
    )),
    ("tls", _REQUIRED, (
        ("ca", _FILES | _REQUIRED, None, None),
        ("cert", _FILE | _UNLESS_PROVISIONED, None, None),
        ("key", _FILE | _UNLESS_PROVISIONED, None, None),
        ("server_hostname", _HOST, None, None),
        ("allow_unverified", _BOOL, False, None),
    )),
    ("timeouts_ms", 0, (
        ("dns", _INT, 5000, (1, _TIMEOUT_MAX_MS)),
        ("connect", _INT, 5000, (1, _TIMEOUT_MAX_MS)),
        ("handshake", _INT, 10000, (1, _TIMEOUT_MAX_MS)),
        ("io", _INT, 5000, (1, _TIMEOUT_MAX_MS)),
    )),
    ("sample", 0, (
        ("interval_ms", _INT, 1000, (10, 86400000)),
        ("adc_pin", _INT, 34, (0, 48)),
        ("volts_per_count", _NUM, 0.0125, (1e-6, 100)),
        # A window must hold at least one full cycle at 45 Hz to find a period.
        ("window_ms", _INT, 100, (25, 1000)),
        # Each sample costs 6 bytes of RAM (u16 value + u32 time).
        ("samples", _INT, 200, (16, 2000)),
        ("volts_min", _NUM, 90, (0, 1000)),
        ("volts_max", _NUM, 264, (0, 1000)),
        ("hz_min", _NUM, 45, (1, 1000)),
        ("hz_max", _NUM, 65, (1, 1000)),
    )),
    ("backoff", 0, (
        ("min_ms", _INT, 500, (1, 3600000)),
        ("max_ms", _INT, 30000, (1, 3600000)),
    )),
    ("run", 0, (
        # 0 = forever; N > 0: stop cleanly after N acknowledged readings.
        ("max_readings", _INT, 0, (0, 1000000000)),
    )),
    # Zero-typing provisioning (securenode/provision.py): with no MQTT credentials, ask the
    # base station; it is trusted only through tls.ca, never through discovery.
    ("provisioning", 0, (
        # No host: listen for the base station's UDP beacon (a hint; TLS decides trust).
        ("host", _HOST, None, None),
        ("port", _INT, 8443, (1, 65535)),
        ("server_hostname", _HOST, None, None),
        ("beacon_port", _INT, 48443, (1, 65535)),
        ("beacon_wait_ms", _INT, 10000, (1, _TIMEOUT_MAX_MS)),
        ("name", _STR, None, 64),
        ("poll_min_ms", _INT, 1000, (100, 30000)),
        # Polls must come well inside the base station's 60 s release window.
        ("poll_max_ms", _INT, 10000, (100, 30000)),
        # How long one request waits for the operator before the board asks anew.
        ("wait_s", _INT, 300, (1, 86400)),
        ("credentials", _STR, "mqtt_credentials.json", 64),
        ("max_response_bytes", _INT, 2048, (256, 16384)),
    )),
    # Used when transport is "wss" (readings to an ingest endpoint) or "mqtt_wss".
    ("wss", 0, (
        ("host", _HOST, None, None),
        ("port", _INT, 443, (1, 65535)),
        ("path", _STR, None, 256),
        ("token", _SECRET, "", 512),
        # Largest message accepted from the peer; checked before any buffer grows.
        ("max_message_bytes", _INT, 4096, (125, 1048576)),
    )),
    # The outbox on flash (outbox.py): readings wait there until acknowledged.
    ("outbox", 0, (
        ("budget_bytes", _INT, 16384, (1024, 16777216)),
        ("segment_bytes", _INT, 2048, (_OUTBOX_MAX_RECORD + 10, 1048576)),
        # Acks kept in RAM before the head is written to flash: fewer writes, and at most
        # ack_batch - 1 resends after a power cut (storage dedupes them by (device, seq)).
        ("ack_batch", _INT, 8, (1, 1000)),
        # Backlog readings sent between two samples: a backlog never starves sampling.
        ("send_burst", _INT, 8, (1, 1000)),
    )),
    # Used when transport is "jsonl": one reading per line over pinned TLS, one ack line back.
    ("jsonl", 0, (
        ("host", _HOST, None, None),
        ("port", _INT, 8884, (1, 65535)),
    )),
))


def load(path="config.json"):
    """Read, parse and validate a config file; raise ConfigError on any problem.

    File names in the tls section are resolved next to the config file.

    >>> cfg = load("config.json")
    >>> cfg.mqtt.host, cfg.mqtt.port, cfg.tls.ca
    ('localhost', 8883, ['ca.der'])
    """
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
    # Errors name the file as its directory holds it; the tls files live in that directory
    # (MicroPython has no os.path).
    i = path.rfind("/")
    source = path[i + 1:]
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ConfigError("%s: not valid JSON (%s)" % (source, e))
    return validate(data, source, path[:i] if i > 0 else path[:i + 1])


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
    schema = _SCHEMA
    provisioned = "provisioning" in data
    cfg = Config()
    for name, flags, fields in schema:
        known = [f[0] for f in fields]
        if not name:  # the top level: its own fields, then one per section
            raw, section, prefix = data, cfg, ""
            known += [s[0] for s in schema[1:]]
        else:
            raw = data.get(name)
            if raw is None:
                if flags & _REQUIRED or (flags & _UNLESS_PROVISIONED and not provisioned):
                    raise ConfigError("%s: %s is required" % (source, name), name)
                raw = {}
            elif type(raw) is not dict:
                raise ConfigError("%s: %s must be an object, got %s"
                                  % (source, name, _show(raw)), name)
            section, prefix = Config(), name + "."
            setattr(cfg, name, section)
        # A typo ("mqtt.prot") must fail loudly rather than silently use the default.
        for key in raw:
            if key not in known:
                raise ConfigError("%s: unknown field %s%s (expected one of: %s)"
                                  % (source, prefix, key, ", ".join(known)), prefix + key)
        for key, kind, default, arg in fields:
            field = prefix + key
            if key in raw:
                value = _check(source, field, kind & _KIND_MASK, raw[key], arg, base_dir)
            elif kind & _REQUIRED or (kind & _UNLESS_PROVISIONED and not provisioned):
                raise ConfigError("%s: %s is required" % (source, field), field)
            else:
                value = default
            setattr(section, key, value)
    if not provisioned:
        cfg.provisioning = None
    _cross_checks(source, cfg)
    return cfg


def _check(source, field, kind, value, arg, base_dir):
    # The value to keep for one field (a file name resolved next to config.json), or the
    # ConfigError naming the field, what it must be and what it is.
    t = type(value)
    if kind == _INT:
        # JSON true/false are not numbers here, though Python would allow them.
        if t is int and arg[0] <= value <= arg[1]:
            return value
        what = "an integer %d..%d" % arg
    elif kind == _NUM:
        if (t is int or t is float) and arg[0] <= value <= arg[1]:
            return value
        what = "a number %s..%s" % (_show(arg[0]), _show(arg[1]))
    elif kind == _BOOL:
        if t is bool:
            return value
        what = "true or false"
    elif kind == _NAME:
        if t is str and 1 <= len(value) <= arg and all(c in _NAME_CHARS for c in value):
            return value
        what = "1..%d characters of A-Z a-z 0-9 _ -" % arg
    elif kind == _HOST:
        # No spaces, schemes or ports; a name does not start with a dot or a dash.
        if (t is str and 1 <= len(value) <= 253 and all(c in _HOST_CHARS for c in value)
                and value[0] != "." and value[0] != "-"):
            return value
        what = "a host name or IP address"
    elif kind == _STR:
        if t is str and 1 <= len(value) <= arg:
            return value
        what = "a string of 1..%d characters" % arg
    elif kind == _SECRET:
        if t is str and len(value) <= arg:
            return value
        # Say what is wrong without quoting it: the value may be the real key.
        raise ConfigError("%s: %s must be a string of at most %d characters (value not shown)"
                          % (source, field, arg), field)
    elif kind == _ONE_OF:
        if value in arg:
            return value
        raise ConfigError("%s: %s must be one of %s, got %s"
                          % (source, field, ", ".join(arg), _show(value)), field)
    elif kind == _FILES and t is not str and (t is not list or not value):
        what = "a file name or a non-empty list of file names"
    else:  # _FILE, or _FILES: a name or a non-empty list, each checked as a _FILE
        one = kind == _FILE or t is str
        paths = []
        for i, name in enumerate([value] if one else value):
            where = field if kind == _FILE else "%s[%d]" % (field, i)
            if type(name) is not str or not name:
                raise ConfigError("%s: %s must be a file name, got %s"
                                  % (source, where, _show(name)), where)
            path = name
            if base_dir and name[0] != "/":
                path = base_dir + name if base_dir[-1] == "/" else base_dir + "/" + name
            try:
                size = os.stat(path)[6]
            except OSError:
                # Any stat failure on flash means the file is not usable; errno values
                # differ between ports, so they are not decoded here.
                raise ConfigError('%s: %s: file "%s" not found' % (source, where, name), where)
            if size == 0:
                raise ConfigError('%s: %s: file "%s" is empty' % (source, where, name), where)
            paths.append(path)
        return paths[0] if kind == _FILE else paths
    raise ConfigError("%s: %s must be %s, got %s" % (source, field, what, _show(value)), field)


def _cross_checks(source, cfg):
    # Defaults that depend on other fields, then rules spanning fields.
    transport = cfg.transport
    if cfg.mqtt.client_id is None:
        cfg.mqtt.client_id = cfg.device_id
    w = cfg.wss
    if w.path is None:
        w.path = "/ingest/" + cfg.device_id if transport == "wss" else "/mqtt"
    # The path and token go into HTTP header lines: no spaces or control characters (only
    # visible ASCII, ! to ~).
    if w.path[0] != "/" or not all(32 < ord(c) < 127 for c in w.path):
        raise _refuse(source, "wss", "path", "must start with / and hold no spaces or control "
                      "characters, got " + _show(w.path))
    if w.token and not all(32 < ord(c) < 127 for c in w.token):
        raise _refuse(source, "wss", "token",
                      "must hold no spaces or control characters (value not shown)")
    if transport == "wss" or transport == "mqtt_wss":
        if w.host is None:
            raise _refuse(source, "wss", "host", "is required for transport " + transport)
        if transport == "wss" and not w.token:
            raise _refuse(source, "wss", "token", "is required for transport wss")
        if cfg.tls.server_hostname is None:
            cfg.tls.server_hostname = w.host
    o = cfg.outbox
    o.max_record = _OUTBOX_MAX_RECORD
    if o.budget_bytes < 2 * o.segment_bytes:
        raise _refuse(source, "outbox", "budget_bytes", "must be >= 2 * outbox.segment_bytes "
                      "(%d), got %d" % (2 * o.segment_bytes, o.budget_bytes))
    if transport == "jsonl":
        if cfg.jsonl.host is None:
            raise _refuse(source, "jsonl", "host", "is required for transport jsonl")
        if cfg.tls.server_hostname is None:
            cfg.tls.server_hostname = cfg.jsonl.host
    if cfg.tls.server_hostname is None:
        cfg.tls.server_hostname = cfg.mqtt.host
    p = cfg.provisioning
    if p is not None:
        if p.server_hostname is None:
            p.server_hostname = p.host
        if p.name is None:
            p.name = cfg.device_id
        if p.poll_max_ms < p.poll_min_ms:
            raise _refuse(source, "provisioning", "poll_max_ms", "must be >= "
                          "provisioning.poll_min_ms (%d), got %d" % (p.poll_min_ms, p.poll_max_ms))
        if not all(c in _NAME_CHARS or c == "." for c in p.credentials):
            raise _refuse(source, "provisioning", "credentials",
                          "must be a plain file name, got " + _show(p.credentials))
        if (cfg.tls.cert is None) != (cfg.tls.key is None):
            missing, other = ("key", "cert") if cfg.tls.key is None else ("cert", "key")
            raise _refuse(source, "tls", missing, "is required with tls." + other)
    b = cfg.backoff
    if b.max_ms < b.min_ms:
        raise _refuse(source, "backoff", "max_ms", "must be >= backoff.min_ms (%d), got %d"
                      % (b.min_ms, b.max_ms))
    s = cfg.sample
    if s.window_ms * 1000 // s.samples < _MIN_SAMPLE_PERIOD_US:
        raise _refuse(source, "sample", "samples", "must leave >= %d us between samples "
                      "(sample.window_ms %d), got %d"
                      % (_MIN_SAMPLE_PERIOD_US, s.window_ms, s.samples))
    if s.interval_ms < s.window_ms:
        raise _refuse(source, "sample", "interval_ms", "must be >= sample.window_ms (%d), "
                      "got %d" % (s.window_ms, s.interval_ms))
    if s.volts_max <= s.volts_min:
        raise _refuse(source, "sample", "volts_max", "must be > sample.volts_min (%s), got %s"
                      % (_show(s.volts_min), _show(s.volts_max)))
    if s.hz_max <= s.hz_min:
        raise _refuse(source, "sample", "hz_max", "must be > sample.hz_min (%s), got %s"
                      % (_show(s.hz_min), _show(s.hz_max)))


def _refuse(source, name, key, text):
    # The ConfigError for field ``key`` of section ``name``: "<file>: <name>.<key> <text>".
    return ConfigError("%s: %s.%s %s" % (source, name, key, text), name + "." + key)


def _show(value):
    # JSON's vocabulary (null, true, a list...), since that is what the user wrote.
    t = type(value)
    if t is str:
        if len(value) > _MAX_GOT_CHARS:
            value = value[:_MAX_GOT_CHARS] + "..."
        return '"%s"' % value
    if t is list:
        return "a list"
    if t is dict:
        return "an object"
    return json.dumps(value)
