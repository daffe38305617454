"""argparse value types shared by the host services' command lines.

Each refuses nan, inf and out-of-range values with a one-line argparse error, so a typo in a
limit never reaches a server as a zero cap or an endless timeout.

    >>> positive(int)("5")
    5
    >>> non_negative(float)("0")
    0.0
"""

import argparse


def _bounded(kind, low_ok, what):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        # Comparisons with nan are all False, and inf is past the upper bound: both refused.
        if value is None or not ((0 <= value) if low_ok else (0 < value)) or not value < 1e9:
            raise argparse.ArgumentTypeError("expected %s, got %r" % (what, text))
        return value
    return parse


def positive(kind):
    """An argparse type: a number of ``kind`` above 0 (and below 1e9)."""
    return _bounded(kind, False, "a positive number")


def non_negative(kind):
    """An argparse type: a number of ``kind`` of at least 0 (and below 1e9)."""
    return _bounded(kind, True, "a number >= 0")
