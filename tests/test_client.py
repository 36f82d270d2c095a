"""Publisher and Subscriber over real sockets on 127.0.0.1, random ports."""

from __future__ import annotations

import time

import msgpack
import numpy as np
import pytest
import zmq

from rtdenoise.stream import wire
from rtdenoise.stream.client import Publisher, Subscriber
from rtdenoise.stream.wire import WireError

pytestmark = pytest.mark.timeout(30)

ANY_PORT = "tcp://127.0.0.1:*"


def _handshake(send, sub: Subscriber, *, within: float = 5.0):
    """Send until the subscriber receives (PUB drops messages until SUB has joined)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        send()
        try:
            return sub.recv(timeout=0.02)
        except TimeoutError:
            pass
    raise AssertionError(f"nothing arrived within {within} s")


def _drain(sub: Subscriber):
    try:
        while True:
            sub.recv(timeout=0.05)
    except TimeoutError:
        pass


@pytest.fixture
def raw_pub():
    sock = zmq.Context.instance().socket(zmq.PUB)
    sock.bind(ANY_PORT)
    yield sock, sock.getsockopt(zmq.LAST_ENDPOINT).decode()
    sock.close(linger=0)


def test_publisher_to_subscriber_roundtrip_small_and_large():
    with Subscriber(ANY_PORT, kind="frames", bind=True) as sub, \
            Publisher(sub.address, stream="rig1", fs=50.0) as pub:
        assert sub.address.startswith("tcp://127.0.0.1:") and not sub.address.endswith("*")
        _handshake(lambda: pub.send(np.zeros((1, 152), "<u2")), sub)
        _drain(sub)

        small = np.arange(3 * 152, dtype="<u2").reshape(3, 152)
        pub.send(small, seq=100, t_ns=123, meta={"laser": "473nm"})
        header, frames = sub.recv(timeout=5)
        assert header == {"v": 1, "stream": "rig1", "seq": 100, "n": 3, "shape": [152], "dtype": "<u2",
                          "t_ns": 123, "fs": 50.0, "meta": {"laser": "473nm"}}
        np.testing.assert_array_equal(frames, small)
        assert frames.flags.aligned  # small messages may arrive unaligned: decode copies those

        # > 64 kB: sent zero-copy (pyzmq copies parts under the socket's copy_threshold)
        large = np.random.default_rng(1).integers(0, 4096, size=(256, 152)).astype("<u2")
        assert large.nbytes > zmq.COPY_THRESHOLD
        pub.send(large)
        header, frames = sub.recv(timeout=5)
        assert header["seq"] == 103 and header["n"] == 256  # auto seq continues after 100 + 3
        np.testing.assert_array_equal(frames, large)


def test_publisher_binds_and_subscriber_connects_images():
    with Publisher(ANY_PORT, stream="cam", bind=True, shape=(32, 48)) as pub, \
            Subscriber(pub.address, kind="frames", streams="cam") as sub:
        assert pub.address.startswith("tcp://127.0.0.1:")
        image = np.random.default_rng(2).random((32, 48)).astype("<f4")
        header, frames = _handshake(lambda: pub.send(image), sub)  # a single image, n=1
        assert (header["n"], header["shape"], header["dtype"]) == (1, [32, 48], "<f4")
        np.testing.assert_array_equal(frames[0], image)


def test_auto_seq_and_time():
    with Subscriber(ANY_PORT, kind="frames", bind=True) as sub, Publisher(sub.address, stream="s") as pub:
        _handshake(lambda: pub.send(np.zeros(8, "<i2")), sub)
        _drain(sub)
        start = pub.next_seq
        t0 = time.time_ns()
        sizes = [1, 3, 2, 5]
        sent = [pub.send(np.zeros((n, 8), "<i2")) for n in sizes]
        got = [sub.recv(timeout=5)[0] for _ in sizes]
        expected = list(np.cumsum([start] + sizes[:-1]))
        assert sent == expected and [h["seq"] for h in got] == expected
        assert [h["n"] for h in got] == sizes
        assert all(t0 <= h["t_ns"] <= time.time_ns() for h in got)
        assert pub.next_seq == start + sum(sizes)
        # An explicit seq resets the count
        pub.send(np.zeros(8, "<i2"), seq=1000)
        pub.send(np.zeros(8, "<i2"))
        assert [sub.recv(timeout=5)[0]["seq"] for _ in range(2)] == [1000, 1001]


def test_publisher_keeps_one_shape_and_dtype_per_stream():
    with Publisher(ANY_PORT, stream="s", bind=True) as pub:
        pub.send(np.zeros((2, 152), "<u2"))
        pub.send(np.zeros(152, "<u2"))  # single frame, shape known
        with pytest.raises(ValueError, match=r"shape \(152,\).*got an array of shape \(2, 150\)"):
            pub.send(np.zeros((2, 150), "<u2"))
        with pytest.raises(ValueError, match="'<u2' frames; got '<f4'"):
            pub.send(np.zeros((1, 152), "<f4"))
        with pytest.raises(WireError):
            pub.send(np.zeros((1, 152), "<u2"), seq=-1)
    assert pub.closed
    with pytest.raises(RuntimeError, match="closed"):
        pub.send(np.zeros(152, "<u2"))


def test_bad_constructor_arguments():
    with pytest.raises(ValueError):
        Publisher(ANY_PORT, stream="", bind=True)
    with pytest.raises(ValueError, match="fs"):
        Publisher(ANY_PORT, stream="s", bind=True, fs=0)
    with pytest.raises(ValueError, match="endpoint"):
        Publisher("127.0.0.1:5555", stream="s")
    with pytest.raises(ValueError, match="kind"):
        Subscriber(ANY_PORT, kind="raw", bind=True)
    with pytest.raises(ValueError, match="empty"):
        Subscriber(ANY_PORT, streams=[], bind=True)


def test_recv_timeout():
    with Subscriber(ANY_PORT, bind=True) as sub:
        t = time.monotonic()
        with pytest.raises(TimeoutError, match="within 0.2 s"):
            sub.recv(timeout=0.2)
        assert 0.15 <= time.monotonic() - t < 2
        with pytest.raises(TimeoutError):
            sub.recv(timeout=0)
    with pytest.raises(RuntimeError, match="closed"):
        sub.recv(timeout=0)


def _denoised(stream: str, seq: int):
    header = {"stream": stream, "seq": seq, "t_ns": 0, "t_recv_ns": 1, "t_pub_ns": 2, "lag": 0,
              "model": "m", "gap": 0, "warm": True, "epoch": 1}
    return wire.encode_denoised(header, np.full((1, 4), seq, "<f4"))


def test_prefix_subscription_filters_streams(raw_pub):
    sock, address = raw_pub
    with Subscriber(address, streams=["a"]) as only_a, Subscriber(address) as every, \
            Subscriber(address, streams=["a", "b"]) as a_and_b:
        for sub in (only_a, every, a_and_b):
            _handshake(lambda: sock.send_multipart(_denoised("a", 0)), sub)
        for sub in (only_a, every, a_and_b):
            _drain(sub)
        # One connection per subscriber: messages arrive in the order sent.
        for stream, seq in [("b", 1), ("ab", 2), ("a", 3), ("abc", 4), ("b", 5)]:
            sock.send_multipart(_denoised(stream, seq))
        sock.send_multipart(wire.encode_frames("a", np.zeros((1, 4), "<u2"), seq=6, t_ns=0))  # raw: not denoised/

        def received(sub):
            out = []
            try:
                while True:
                    header, frames = sub.recv(timeout=0.2)
                    assert frames[0, 0] == header["seq"]
                    out.append((header["stream"], header["seq"]))
            except TimeoutError:
                return out

        assert received(only_a) == [("a", 3)]  # "ab", "abc" share the prefix but are skipped
        assert received(a_and_b) == [("b", 1), ("a", 3), ("b", 5)]
        assert received(every) == [("b", 1), ("ab", 2), ("a", 3), ("abc", 4), ("b", 5)]


def test_iteration(raw_pub):
    sock, address = raw_pub
    with Subscriber(address, streams="x") as sub:
        _handshake(lambda: sock.send_multipart(_denoised("x", 0)), sub)
        _drain(sub)
        for seq in (10, 11, 12):
            sock.send_multipart(_denoised("x", seq))
        seqs = []
        for header, frames in sub:
            seqs.append(header["seq"])
            if len(seqs) == 3:
                break
        assert seqs == [10, 11, 12]


def test_malformed_messages_raise_or_are_dropped_and_counted(raw_pub):
    sock, address = raw_pub
    garbage = [b"denoised/x", b"\xc1", b""]
    bad_size = _denoised("x", 1)[:2] + [b"\x00" * 3]
    with Subscriber(address, streams="x") as strict, Subscriber(address, streams="x", drop_invalid=True) as lenient:
        for sub in (strict, lenient):
            _handshake(lambda: sock.send_multipart(_denoised("x", 0)), sub)
        for sub in (strict, lenient):
            _drain(sub)
        sock.send_multipart(garbage)
        sock.send_multipart(bad_size)
        sock.send_multipart([b"denoised/x", msgpack.packb({"v": 1})])  # 2 parts
        sock.send_multipart(_denoised("x", 7))

        with pytest.raises(WireError) as e:
            strict.recv(timeout=5)
        assert e.value.reason == "header_msgpack"
        with pytest.raises(WireError) as e:
            strict.recv(timeout=5)
        assert e.value.reason == "payload_size"
        with pytest.raises(WireError) as e:
            strict.recv(timeout=5)
        assert e.value.reason == "parts"
        assert strict.recv(timeout=5)[0]["seq"] == 7  # keeps working after bad messages

        assert lenient.recv(timeout=5)[0]["seq"] == 7
        for sub in (strict, lenient):
            assert sub.rejected == {"header_msgpack": 1, "payload_size": 1, "parts": 1}


def test_shared_context_and_close_is_idempotent():
    ctx = zmq.Context()
    try:
        sub = Subscriber(ANY_PORT, kind="frames", bind=True, context=ctx)
        pub = Publisher(sub.address, stream="s", context=ctx)
        _handshake(lambda: pub.send(np.zeros(4, "|u1")), sub)
        for obj in (pub, sub):
            obj.close()
            obj.close()
            assert obj.closed
        assert "stream='s'" in repr(pub) and "frames" in repr(sub)  # repr works after close
    finally:
        ctx.term()


# ----------------------------------------------------------------------------- sockets shared with the service


def test_bind_or_connect_names_the_socket_only_when_asked():
    from rtdenoise.stream.sockets import bind_or_connect

    ctx = zmq.Context.instance()
    a, b = ctx.socket(zmq.PUB), ctx.socket(zmq.PUB)
    try:
        addr = bind_or_connect(a, ANY_PORT, True)
        assert addr.startswith("tcp://127.0.0.1:") and not addr.endswith("*")
        with pytest.raises(ValueError, match="endpoint"):
            bind_or_connect(b, "127.0.0.1:5555", True)
        with pytest.raises(zmq.ZMQError):  # a client's error passes through
            bind_or_connect(b, addr, True)
        with pytest.raises(ValueError, match=r"cannot bind the pub socket to .*another service"):
            bind_or_connect(b, addr, True, name="pub")
        assert bind_or_connect(b, addr, False) == addr
    finally:
        a.close(linger=0)
        b.close(linger=0)


def test_open_client_closes_its_socket_when_it_cannot_bind():
    from rtdenoise.stream.sockets import open_client

    ctx = zmq.Context()
    try:
        sock, addr = open_client(zmq.SUB, ANY_PORT, bind=True, context=ctx, options=[(zmq.RCVHWM, 7)])
        assert sock.rcvhwm == 7 and addr.startswith("tcp://127.0.0.1:")
        with pytest.raises(zmq.ZMQError):
            open_client(zmq.SUB, addr, bind=True, context=ctx)
        sock.close(linger=0)
    finally:
        ctx.term()  # would hang on a socket left open


def test_service_sockets_alone_bind_count_connections_and_close():
    from rtdenoise.stream.sockets import ServiceSockets

    s = ServiceSockets(sub=ANY_PORT, bind_sub=True, pub=ANY_PORT, control=ANY_PORT, subscribe=("rig",))
    try:
        assert set(s.addresses) == {"sub", "pub", "control"} and s.curve is None
        assert all(a.startswith("tcp://127.0.0.1:") for a in s.addresses.values())
        pub = Publisher(s.addresses["sub"], stream="rig1")
        seen, deadline = [], time.monotonic() + 5
        while "accepted" not in seen:
            assert time.monotonic() < deadline, seen
            if s.monitors["sub"].poll(50):
                seen += list(s.events("sub"))
        # what the service subscribed to: only its prefix arrives
        got, deadline = None, time.monotonic() + 5
        other = Publisher(s.addresses["sub"], stream="cam1")
        while got is None:
            assert time.monotonic() < deadline
            other.send(np.zeros(4, "<u2"))
            pub.send(np.zeros(4, "<u2"))
            if s.sub.poll(20):
                got = s.sub.recv_multipart()
        assert got[0] == b"frames/rig1"
        pub.close()
        other.close()
    finally:
        s.close_all()
    assert s.sub.closed and s.pub.closed and s.control.closed and all(m.closed for m in s.monitors.values())
    s.close_all()  # twice is fine
