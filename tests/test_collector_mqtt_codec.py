"""tools/collector_mqtt_codec.py: the collector's MQTT 3.1.1 packets, byte-exact and fuzzed."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tools import collector_mqtt_codec as codec


def publish(topic, payload, pid, qos=1):
    body = codec._utf8(topic) + (pid.to_bytes(2, "big") if qos else b"") + payload
    return bytes((0x30 | qos << 1,)) + codec._remaining_length(len(body)) + body


def test_connect_and_subscribe_are_the_bytes_of_mqtt_3_1_1():
    # 3.1.2: protocol name, level 4, flags (clean session bit 1 off: a persistent session),
    # keepalive, client id; 3.8: packet id, filter, requested QoS; fixed header 0x82.
    assert codec.connect_packet("collector", 10) == (
        b"\x10\x15\x00\x04MQTT\x04\x00\x00\x0a\x00\x09collector")
    assert codec.connect_packet("c", 10, clean_session=True)[9] == 0x02
    assert codec.subscribe_packet(1, [("$share/g/devices/+/readings", 1)]) == (
        b"\x82\x20\x00\x01\x00\x1b$share/g/devices/+/readings\x01")
    assert codec.puback_packets([65535]) == b"\x40\x02\xff\xff"


def test_each_packet_a_subscriber_receives_is_parsed():
    stream = (b"\x20\x02\x01\x00" + b"\x90\x04\x00\x01\x01\x80" + publish("a/b", b"x", 9)
              + publish("q/0", b"", 0, qos=0) + b"\xd0\x00")
    packets, end = codec.parse(stream, 0, 1024)
    assert end == len(stream)
    assert packets == [(codec.CONNACK, 1, 0), (codec.SUBACK, 1, [1, 0x80]),
                       (codec.PUBLISH, "a/b", b"x", 9, 1), (codec.PUBLISH, "q/0", b"", 0, 0),
                       (codec.PINGRESP,)]


def test_parse_stops_after_max_packets_and_returns_where_the_next_one_starts():
    # The consumer takes at most what its writer has room for; the rest stays buffered.
    stream = publish("a/b", b"1", 1) + publish("a/b", b"2", 2) + b"\xd0\x00"
    first = len(publish("a/b", b"1", 1))
    assert codec.parse(stream, 0, 1024, max_packets=1) == (
        [(codec.PUBLISH, "a/b", b"1", 1, 1)], first)
    packets, end = codec.parse(stream, first, 1024, max_packets=5)
    assert [p[0] for p in packets] == [codec.PUBLISH, codec.PINGRESP] and end == len(stream)
    assert codec.parse(stream, 0, 1024, max_packets=0) == ([], 0)


@pytest.mark.parametrize("stream, reason", [
    (b"\x30\xff\xff\xff\xff\x01", "remaining length longer than 4 bytes"),
    (b"\x34\x05\x00\x01a\x00\x01", "QoS 2"),
    (b"\x40\x02\x00\x01", "unexpected packet type 4"),
    (b"\x32\x03\x00\x09a", "topic of 9 bytes in a 3-byte body"),
    (b"\x32\x05\x00\x01\xff\x00\x01", "topic is not UTF-8"),
    (b"\x90" + codec._remaining_length(100000) + b"\x00", "100000-byte body for packet type 9"),
])
def test_a_broken_stream_is_a_protocol_error_that_names_it(stream, reason):
    with pytest.raises(codec.ProtocolError, match=reason):
        codec.parse(stream, 0, 1024)


def test_an_oversized_publish_is_reported_before_its_body_arrives():
    head = b"\x32" + codec._remaining_length(5000) + b"\x00\x03a/b\x00\x2a"
    packets, end = codec.parse(head + b"z" * 10, 0, 1024)
    assert packets == [(codec.OVERSIZE, "a/b", 42, 1, 5000, 5000)]
    assert end == 1 + len(codec._remaining_length(5000))   # the body starts here: skip 5000


packet_st = st.one_of(
    st.builds(publish, st.text(min_size=1, max_size=30).filter(lambda t: "\x00" not in t),
              st.binary(max_size=300), st.integers(1, 65535), st.sampled_from([0, 1])),
    st.just(b"\xd0\x00"),
    st.builds(lambda sp, rc: bytes((0x20, 2, sp, rc)), st.integers(0, 1), st.integers(0, 5)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(packet_st, max_size=20), st.lists(st.integers(1, 400), max_size=30))
def test_packets_split_anywhere_across_reads_come_out_whole_and_in_order(packets, cuts):
    stream = b"".join(packets)
    whole, end = codec.parse(stream, 0, 1024)
    assert end == len(stream) and len(whole) == len(packets)
    # The same bytes, delivered in arbitrary pieces, as the consumer feeds them.
    got, buf, at = [], bytearray(), 0
    for cut in cuts + [len(stream)]:
        buf += stream[at:at + cut]
        at += cut
        out, used = codec.parse(buf, 0, 1024)
        del buf[:used]
        got += out
    assert got == whole and not buf
