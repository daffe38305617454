"""A power-safe outbox on flash: readings wait here until the peer acknowledged them.

Layout under one directory (``outbox/`` by default)::

    00000001.seg  00000002.seg ...   append-only segments of records
    state                            head position, counters; replaced by rename, never edited

A record is ``<H payload length> <I seq> <I crc32(seq bytes + payload)> <payload>``. A power
cut can tear only the record being appended (the tail): at open, the tail is scanned, the
first record whose length or CRC does not hold ends the segment, and the good prefix is kept.
A good record is never dropped for a torn one.

Removal is by acknowledgement: the head moves forward in RAM, the ``state`` file records it
every ``ack_batch`` acks (a crash in between resends at most ack_batch - 1 readings, which
storage dedupes by (device, seq)), and a segment is deleted once every record in it is
acknowledged. Nothing is rewritten per reading: flash wears by erase cycles.

The sequence number is never stored on its own: it is the highest seq found in the records,
the state file (last acknowledged) or a torn tail, plus one. A torn record's seq is never
reused: it might have been half-written with content that will never be sent.

Bounded by ``budget_bytes``: when an append would exceed it, the oldest segment goes first,
and its unacknowledged records are counted in ``dropped`` (persisted, reported in status).

Example::

    box = Outbox("outbox", budget_bytes=16384, segment_bytes=2048)
    torn = box.open()                # [(seq, bytes_dropped)] torn tails found, usually []
    seq = box.next_seq
    box.append(seq, b'{"seq":1}')
    seq, payload = box.peek()        # oldest unacknowledged, or None
    box.ack(seq)
"""

import binascii
import os
import struct
import sys

from micropython import const

_HEADER_BYTES = const(10)
_STATE_VERSION = const(1)  # outbox_open reads what _save_state writes: keep both in step


class OutboxError(Exception):
    """The outbox on flash cannot be used (bad arguments, a record too large, flash error)."""


def encode_header(buf, seq, payload):
    """Fill buf[0:10] with the record header for (seq, payload); return the record length.

    >>> h = bytearray(10)
    >>> encode_header(h, 1, b"x"), bytes(h[:6])
    (11, b'\\x01\\x00\\x01\\x00\\x00\\x00')
    """
    # Packed twice with the one format check_record reads: the CRC covers the seq bytes.
    struct.pack_into("<HII", buf, 0, len(payload), seq, 0)
    crc = binascii.crc32(payload, binascii.crc32(memoryview(buf)[2:6])) & 0xFFFFFFFF
    struct.pack_into("<HII", buf, 0, len(payload), seq, crc)
    return _HEADER_BYTES + len(payload)


def check_record(buf, payload):
    """Return the seq if buf (a 10-byte header) and payload form a good record, else -1.

    >>> h = bytearray(10); n = encode_header(h, 7, b"abc")
    >>> check_record(h, b"abc"), check_record(h, b"abd")
    (7, -1)
    """
    length, seq, crc = struct.unpack_from("<HII", buf, 0)
    if length != len(payload):
        return -1
    got = binascii.crc32(payload, binascii.crc32(memoryview(buf)[2:6])) & 0xFFFFFFFF
    return seq if got == crc else -1


def seg_name(number):
    """The file name of segment ``number``.

    >>> seg_name(3)
    '00000003.seg'
    """
    return "%08d.seg" % number


class Outbox:
    def __init__(self, root="outbox", budget_bytes=16384, segment_bytes=2048, max_record=512,
                 ack_batch=8):
        if segment_bytes < max_record + _HEADER_BYTES or budget_bytes < 2 * segment_bytes:
            raise OutboxError("outbox: need segment_bytes >= max_record + %d and budget_bytes "
                              ">= 2 * segment_bytes" % _HEADER_BYTES)
        self.root = root
        self.budget_bytes = budget_bytes
        self.segment_bytes = segment_bytes
        self.max_record = max_record
        self.ack_batch = ack_batch
        self._header = bytearray(_HEADER_BYTES)
        # [segment number, size in bytes, records] oldest first; the last one takes appends.
        self._segs = []
        self._head_off = 0       # byte offset of the oldest unacked record in _segs[0]
        self._head_index = 0     # how many records of _segs[0] are acknowledged
        self._head = None        # cached (seq, payload) of the record at the head
        self._cursor = None      # [segment, offset, index] of the next record to send
        self._unsaved_acks = 0
        self.next_seq = 1
        self.acked_seq = 0
        self.depth = 0           # records waiting for an acknowledgement
        self.dropped = 0         # records lost to the byte budget, ever (persisted)
        self.torn = 0            # torn tails found at open, ever (persisted)
        self.boots = 0           # times this outbox was opened (persisted)
        self.bytes_written = 0   # bytes this outbox wrote to flash since open

    def _path(self, name):
        return self.root + "/" + name

    # --- opening ---------------------------------------------------------------------
    def open(self):
        """Read the state, check the tail, and be ready; return [(seq, bytes)] per torn tail.

        The code for it (outbox_open) is loaded for this and dropped again: once per boot.
        """
        from securenode import outbox_open

        try:
            return outbox_open.open_box(self)
        finally:
            sys.modules.pop("securenode.outbox_open", None)
            package = sys.modules.get("securenode")
            if package is not None and "outbox_open" in package.__dict__:
                delattr(package, "outbox_open")

    # --- state -------------------------------------------------------------------------
    def _save_state(self):
        text = "%d %d %d %d %d %d %d\n" % (_STATE_VERSION, self._segs[0][0], self._head_off,
                                           self.acked_seq, self.dropped, self.torn, self.boots)
        tmp = self._path("state.tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, self._path("state"))  # atomic on LittleFS; FAT replaces in place
        self.bytes_written += len(text)
        self._unsaved_acks = 0

    def flush(self):
        """Persist the head now (e.g. before a clean stop), not just every ack_batch acks."""
        if self._unsaved_acks:
            self._save_state()

    # --- append ------------------------------------------------------------------------
    def append(self, seq, payload):
        """Store one reading durably (flushed before returning); seq must be next_seq.

        Drops the oldest segment(s) first when the byte budget would be exceeded.
        """
        if len(payload) > self.max_record:
            raise OutboxError("outbox: record of %d bytes exceeds max_record %d"
                              % (len(payload), self.max_record))
        if seq != self.next_seq:
            raise OutboxError("outbox: append seq %d, expected %d" % (seq, self.next_seq))
        size = _HEADER_BYTES + len(payload)
        tail = self._segs[-1]
        if tail[1] + size > self.segment_bytes:
            tail = [tail[0] + 1, 0, 0]
            self._segs.append(tail)
        total = 0
        for seg in self._segs:
            total += seg[1]
        while total + size > self.budget_bytes and len(self._segs) > 1:
            total -= self._next_segment()
        encode_header(self._header, seq, payload)
        try:
            with open(self._path(seg_name(tail[0])), "ab") as f:
                f.write(self._header)
                f.write(payload)
        except OSError as exc:
            # Whatever reached the flash is now a torn tail: never append after it, and never
            # give this seq to another reading.
            self._segs.append([tail[0] + 1, 0, 0])
            self.next_seq = seq + 1
            raise OutboxError("outbox: writing seq %d to flash failed (%s); that reading is lost"
                              % (seq, exc))
        tail[1] += size
        tail[2] += 1
        self.bytes_written += size
        self.next_seq = seq + 1
        self.depth += 1

    # --- delivery ----------------------------------------------------------------------
    def peek(self):
        """The oldest unacknowledged reading as (seq, payload bytes), or None if empty."""
        if self._head is not None:
            return self._head
        seg = self._segs[0]
        if self._head_index >= seg[2]:
            if len(self._segs) == 1:
                return None
            self._next_segment()
            return self.peek()
        self._head = self._read(seg[0], self._head_off)
        return self._head

    def _read(self, number, offset):
        # The record at offset in segment number, as (seq, payload), checked.
        with open(self._path(seg_name(number)), "rb") as f:
            f.seek(offset)
            f.readinto(self._header)
            payload = f.read(self._header[0] | self._header[1] << 8)
        seq = check_record(self._header, payload)
        if seq < 0:
            raise OutboxError("outbox: record at %s:%d changed on flash"
                              % (seg_name(number), offset))
        return seq, payload

    def rewind(self):
        """Let next_unsent() start at the head again (a new connection resends what was in
        flight on the old one)."""
        self._cursor = None

    def next_unsent(self):
        """The reading after the one next_unsent() returned last (the head after rewind()),
        as (seq, payload), or None: a window of sends runs ahead of the acknowledgements.

        >>> box.rewind(); box.next_unsent()[0], box.next_unsent()[0]   # records 1, 2, 3
        (1, 2)
        """
        cursor = self._cursor
        segs = self._segs
        if cursor is None or cursor[0] < segs[0][0]:
            # From the head (also when the budget dropped the segment the cursor was in).
            cursor = self._cursor = [segs[0][0], self._head_off, self._head_index]
        for seg in segs:
            if seg[0] < cursor[0]:
                continue
            if seg[0] > cursor[0]:
                cursor[0], cursor[1], cursor[2] = seg[0], 0, 0
            if cursor[2] < seg[2]:
                break
        else:
            return None
        record = self._read(cursor[0], cursor[1])
        cursor[1] += _HEADER_BYTES + len(record[1])
        cursor[2] += 1
        return record

    def ack(self, seq):
        """The peer acknowledged seq (the head): it leaves the outbox."""
        head = self.peek()
        if head is None or head[0] != seq:
            raise OutboxError("outbox: ack for seq %d, head is %s"
                              % (seq, head and head[0]))
        self._head_off += _HEADER_BYTES + len(head[1])
        self._head_index += 1
        self._head = None
        self.acked_seq = seq
        self.depth -= 1
        self._unsaved_acks += 1
        if self._head_index >= self._segs[0][2] and len(self._segs) > 1:
            self._next_segment()
        elif self._unsaved_acks >= self.ack_batch:
            self._save_state()

    def _next_segment(self):
        # The head moves to the next segment and the oldest one goes: every record in it is
        # acknowledged (ack, peek), or the byte budget drops the unacknowledged ones (append),
        # counted in dropped. Returns its size in bytes.
        oldest = self._segs.pop(0)
        lost = oldest[2] - self._head_index
        self.dropped += lost
        self.depth -= lost
        self._head_off = 0
        self._head_index = 0
        self._head = None
        self._save_state()  # first the head moves past it, then the file goes
        os.remove(self._path(seg_name(oldest[0])))
        return oldest[1]
