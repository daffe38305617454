# When this firmware was built (unix seconds, UTC). A board clock earlier than this has not
# been set: certificates cannot be judged by it, so TLS waits for NTP instead of guessing.
from micropython import const

BUILD_UNIX_S = const(1795564800)  # 2026-11-25T00:00:00Z
