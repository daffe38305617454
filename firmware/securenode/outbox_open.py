"""Opening an outbox after a boot: read its state, scan the tail for a torn record, resume.

Needed once per boot, so outbox.Outbox.open() loads this module, runs ``open_box`` and
unloads it again: the readings' steady state keeps only append/peek/ack resident (issue 10).

Example::

    box = outbox.Outbox("outbox")
    torn = box.open()       # imports this module, calls open_box(box), forgets it
"""

import binascii
import os
import struct

from micropython import const

from securenode.outbox import seg_name

_HEADER_BYTES = const(10)
_STATE_VERSION = const(1)
_CHUNK_BYTES = const(64)


def open_box(outbox):
    """Read the state, check the tail, and make ``outbox`` ready; [(seq, bytes)] per torn tail.

    Example: ``open_box(Outbox("outbox"))`` gives [] for a fresh outbox.
    """
    try:
        os.mkdir(outbox.root)
    except OSError:
        pass  # exists (errno differs between ports; a real failure shows at the first write)
    head_seg = 0  # no outbox yet (or an unreadable state): the records still give the seq
    try:
        with open(outbox._path("state")) as f:
            fields = f.read().split()
        if len(fields) != 7 or int(fields[0]) != _STATE_VERSION:
            raise ValueError
        values = [int(x) for x in fields[1:]]
        (head_seg, outbox._head_off, outbox.acked_seq, outbox.dropped, outbox.torn,
         outbox.boots) = values
    except (OSError, ValueError):
        pass
    numbers = []
    for name in os.listdir(outbox.root):
        # Only names seg_name() writes: 8 digits, then .seg.
        if name[:-4].isdigit() and name == seg_name(int(name[:-4])):
            numbers.append(int(name[:-4]))
        elif name == "state.tmp":
            os.remove(outbox._path(name))  # a replacement that never completed
    numbers.sort()
    # A small buffer for the scan (a record's CRC is taken piece by piece), garbage once the
    # box is open: a record-sized one here had to be found whole in a heap the link's module
    # had just cut up, and the steady state reads records with their exact length (issue 10).
    body = bytearray(_CHUNK_BYTES)
    torn = []
    highest = outbox.acked_seq
    segs = outbox._segs
    for number in numbers:
        if number < head_seg:
            os.remove(outbox._path(seg_name(number)))  # deletion interrupted by a reset
            continue
        count, good_bytes, last_seq, size = _scan(outbox, number, body)
        if last_seq > highest:
            highest = last_seq
        if good_bytes < size:
            # The torn record carried the next seq: it is lost and never reused.
            highest += 1
            torn.append((highest, size - good_bytes))
            _keep_prefix(outbox, number, good_bytes, body)
        segs.append([number, good_bytes, count])
    if segs and segs[0][0] == head_seg:
        _skip_acked(outbox)
    else:
        outbox._head_off = 0
    if not segs:
        segs.append([max(head_seg, 1), 0, 0])
    outbox.next_seq = highest + 1
    outbox.torn += len(torn)
    outbox.boots += 1
    outbox.depth = -outbox._head_index
    for seg in segs:
        outbox.depth += seg[2]
    outbox._save_state()
    return torn


def _scan(outbox, number, buf):
    # (records, bytes of good records, last good seq, file size) of one segment. A record is
    # good when its whole payload is there and its CRC (outbox.check_record's: seq bytes, then
    # payload) holds, taken here over buf-sized pieces.
    count = good = 0
    last_seq = 0
    header = outbox._header
    view = memoryview(buf)
    with open(outbox._path(seg_name(number)), "rb") as f:
        while True:
            if f.readinto(header) != _HEADER_BYTES:
                break
            length, seq, crc = struct.unpack_from("<HII", header, 0)
            if length > outbox.max_record:
                break  # not a length we ever write: garbage from a torn write
            got = binascii.crc32(memoryview(header)[2:6])
            left = length
            while left:
                n = f.readinto(view[:min(left, len(buf))])
                if not n:
                    break  # the payload ends early: a torn tail
                got = binascii.crc32(view[:n], got)
                left -= n
            if left or got & 0xFFFFFFFF != crc:
                break
            count += 1
            good += _HEADER_BYTES + length
            last_seq = seq
        size = f.seek(0, 2)
    return count, good, last_seq, size


def _keep_prefix(outbox, number, length, buf):
    # MicroPython has no truncate: copy the good prefix (length bytes) and rename it over the
    # segment, once per power cut (never per reading).
    src = outbox._path(seg_name(number))
    tmp = src + ".tmp"
    with open(src, "rb") as f_in:
        with open(tmp, "wb") as f_out:
            left = length
            while left:
                n = f_in.readinto(memoryview(buf)[:min(left, len(buf))])
                f_out.write(memoryview(buf)[:n])
                left -= n
    os.rename(tmp, src)
    outbox.bytes_written += length


def _skip_acked(outbox):
    # Count the records before the persisted head offset, record by record, so that a
    # stale or damaged offset never lands inside a record.
    offset = index = 0
    want = outbox._head_off
    header = outbox._header
    with open(outbox._path(seg_name(outbox._segs[0][0])), "rb") as f:
        while offset < want and index < outbox._segs[0][2]:
            f.readinto(header)
            length = header[0] | header[1] << 8
            f.seek(length, 1)
            offset += _HEADER_BYTES + length
            index += 1
    outbox._head_off = offset
    outbox._head_index = index
