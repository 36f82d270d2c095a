"""Wire protocol v1: encode/decode without sockets, plus the docs/protocol.md examples."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtdenoise.stream import wire
from rtdenoise.stream.wire import WireError

PROTOCOL_MD = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"


def _valid_header(**changes) -> dict:
    h = {"v": 1, "stream": "rig1", "seq": 5, "n": 2, "shape": [4], "dtype": "<u2", "t_ns": 123}
    h.update(changes)
    return {k: v for k, v in h.items() if v is not _DROP}


_DROP = object()


def _parts(header: dict | None = None, payload: bytes | None = None, topic: bytes = b"frames/rig1"):
    header = _valid_header() if header is None else header
    if payload is None:
        payload = bytes(header["n"] * int(np.prod(header["shape"])) * np.dtype(header["dtype"]).itemsize)
    return [topic, msgpack.packb(header), payload]


def _reason(parts, **kwargs) -> str:
    with pytest.raises(WireError) as info:
        wire.decode(parts, **kwargs)
    assert str(info.value).startswith(f"[{info.value.reason}]")
    return info.value.reason


# ----------------------------------------------------------------------------- roundtrip


@pytest.mark.parametrize(
    "dtype,shape",
    [
        pytest.param("<u2", (1, 152), id="u2-1spectrum"),
        pytest.param("<u2", (7, 152), id="u2-chunk"),
        pytest.param(">u2", (3, 10), id="u2-bigendian"),
        pytest.param("|u1", (2, 16, 16), id="u1-images"),
        pytest.param("<i2", (1, 5), id="i2"),
        pytest.param("<u4", (4, 3, 3), id="u4-images"),
        pytest.param("<i4", (2, 2, 3, 4), id="i4-volumes"),
        pytest.param("<f4", (5, 64), id="f4"),
        pytest.param(">f8", (1, 1), id="f8-bigendian-1x1"),
    ],
)
def test_roundtrip(dtype, shape):
    rng = np.random.default_rng(0)
    frames = (rng.random(shape) * 100).astype(dtype)
    parts = wire.encode_frames("rig1", frames, seq=42, t_ns=-7, fs=30.5, meta={"gain": 2, "ch": ["a"]})
    assert len(parts) == 3 and parts[0] == b"frames/rig1"
    topic, header, out = wire.decode(parts)
    assert topic == "frames/rig1"
    assert header == {"v": 1, "stream": "rig1", "seq": 42, "n": shape[0], "shape": list(shape[1:]),
                      "dtype": np.dtype(dtype).str, "t_ns": -7, "fs": 30.5,
                      "meta": {"gain": 2, "ch": ["a"]}}
    assert out.dtype == np.dtype(dtype) and out.shape == shape
    np.testing.assert_array_equal(out, frames)


def test_roundtrip_denoised_and_copy():
    frames = np.linspace(0, 1, 12, dtype="<f4").reshape(3, 4)
    inp = _valid_header(n=99, shape=[1], dtype="<u2")  # derived keys are replaced
    out_h = inp | {"t_recv_ns": 10, "t_pub_ns": 11, "lag": 0, "model": "dncnn-152@abc", "gap": 1,
                   "warm": True, "epoch": 7}
    parts = wire.encode_denoised(out_h, frames)
    assert parts[0] == b"denoised/rig1"
    topic, header, out = wire.decode(parts, copy=True, kind="denoised")
    assert topic == "denoised/rig1"
    assert (header["n"], header["shape"], header["dtype"]) == (3, [4], "<f4")
    assert header["warm"] is True and header["model"] == "dncnn-152@abc"
    assert out.flags.writeable and not np.shares_memory(out, frames)
    np.testing.assert_array_equal(out, frames)


def test_encode_is_zero_copy_and_decode_views_payload():
    frames = np.arange(2 * 100, dtype="<u2").reshape(2, 100)
    parts = wire.encode_frames("s", frames, seq=0, t_ns=0)
    assert np.shares_memory(np.frombuffer(parts[2], dtype="<u2"), frames)
    payload = bytearray(bytes(parts[2]))
    _, _, out = wire.decode([parts[0], parts[1], payload])
    assert np.shares_memory(out, np.frombuffer(payload, dtype=np.uint8))
    payload[0] = 0xFF  # the decoded array sees writes to the received buffer: no copy
    assert out[0, 0] == 0xFF
    # A read-only buffer (bytes, zmq frames) gives a read-only view.
    _, _, ro = wire.decode([parts[0], parts[1], bytes(payload)])
    assert not ro.flags.writeable


def test_unaligned_payload_gives_aligned_copy():
    parts = wire.encode_frames("s", np.arange(8, dtype="<f8").reshape(2, 4), seq=0, t_ns=0)
    raw = bytearray(1 + len(parts[2]))
    raw[1:] = parts[2]
    payload = memoryview(raw)[1:]  # odd address: not aligned for 8-byte floats
    _, _, out = wire.decode([parts[0], parts[1], payload])
    assert out.flags.aligned and not np.shares_memory(out, np.frombuffer(raw, np.uint8))
    np.testing.assert_array_equal(out, np.arange(8.0).reshape(2, 4))


def test_encode_makes_noncontiguous_contiguous():
    base = np.arange(40, dtype="<f4").reshape(4, 10)
    frames = base[:, ::2]
    _, header, out = wire.decode(wire.encode_frames("s", frames, seq=0, t_ns=0))
    assert header["shape"] == [5]
    np.testing.assert_array_equal(out, frames)


def test_decode_accepts_memoryview_and_frame_like_parts():
    parts = _parts()

    class FrameLike:  # what zmq.Frame looks like to decode
        def __init__(self, b):
            self.buffer = memoryview(b)

    topic, header, frames = wire.decode([memoryview(parts[0]), FrameLike(parts[1]), FrameLike(parts[2])])
    assert header["seq"] == 5 and frames.shape == (2, 4)


def test_encode_rejects_bad_input():
    with pytest.raises(WireError) as e:
        wire.encode_frames("s", np.zeros(4, "<u2"), seq=0, t_ns=0)  # needs (n, *shape)
    assert e.value.reason == "shape" and "frames[None]" in str(e.value)
    for bad in (np.zeros((1, 4), bool), np.zeros((1, 4), "<c8"), np.zeros((1, 4), "U3"), np.zeros((1, 4), object)):
        with pytest.raises(WireError) as e:
            wire.encode_frames("s", bad, seq=0, t_ns=0)
        assert e.value.reason == "dtype"
    with pytest.raises(WireError) as e:
        wire.encode_frames("s", np.zeros((1, 4), "<u2"), seq=-1, t_ns=0)
    assert e.value.reason == "header_value"
    with pytest.raises(WireError) as e:
        wire.encode_frames("s", np.zeros((1, 4), "<u2"), seq=0, t_ns=0, meta={1: "int key"})
    assert e.value.reason == "header_msgpack"
    with pytest.raises(WireError) as e:  # denoised needs the output keys
        wire.encode_denoised(_valid_header(), np.zeros((1, 4), "<f4"))
    assert e.value.reason == "header_missing" and "t_recv_ns" in str(e.value)
    # numpy ints are fine for seq/t_ns
    _, h, _ = wire.decode(wire.encode_frames("s", np.zeros((1, 4), "<u2"), seq=np.int64(3), t_ns=np.uint64(9)))
    assert (h["seq"], h["t_ns"]) == (3, 9)


# ----------------------------------------------------------------------------- every rule


@pytest.mark.parametrize(
    "parts,reason,shown",
    [
        pytest.param(_parts()[:2], "parts", "got 2", id="two-parts"),
        pytest.param(_parts() + [b""], "parts", "got 4", id="four-parts"),
        pytest.param([], "parts", "got 0", id="no-parts"),
        pytest.param(b"frames/rig1", "parts", "bytes", id="not-a-sequence"),
        pytest.param([b"frames/rig1", "str header", b""], "parts", "str", id="str-part"),
        pytest.param([b"frames/rig1", None, b""], "parts", "NoneType", id="none-part"),
        pytest.param(_parts(topic=b""), "topic", "0 bytes", id="empty-topic"),
        pytest.param(_parts(topic=b"frames/rig2"), "topic", "'frames/rig2'", id="topic-stream-mismatch"),
        pytest.param(_parts(topic=b"frames"), "topic", "'frames'", id="topic-no-slash"),
        pytest.param(_parts(topic=b"raw/rig1"), "topic", "raw/rig1", id="topic-bad-kind"),
        pytest.param(_parts(topic=b"frames/\xff"), "topic", "UTF-8", id="topic-not-utf8"),
        pytest.param(_parts(topic=b"frames/" + b"x" * 2000), "topic", "2007 bytes", id="topic-too-long"),
        pytest.param([b"frames/rig1", b"", bytes(16)], "header_msgpack", "empty", id="empty-header"),
        pytest.param([b"frames/rig1", b"\xc1garbage", bytes(16)], "header_msgpack", "c1 67", id="garbage-header"),
        pytest.param([b"frames/rig1", msgpack.packb({"v": 1}) + b"\x00", bytes(16)], "header_msgpack", "ExtraData",
                     id="trailing-bytes"),
        pytest.param([b"frames/rig1", b"\xd6\xff\x00\x00\x00\x00", bytes(16)], "header_msgpack", "ext",
                     id="timestamp-ext"),
        pytest.param([b"frames/rig1", b"\x91" * 5000, bytes(16)], "header_msgpack", "StackError", id="deep-nesting"),
        pytest.param([b"frames/rig1", msgpack.packb([1, 2]), bytes(16)], "header_type", "list", id="array-header"),
        pytest.param([b"frames/rig1", msgpack.packb("hi"), bytes(16)], "header_type", "str", id="str-header"),
        pytest.param([b"frames/rig1", msgpack.packb({b"v": 1}), bytes(16)], "header_type", "b'v'", id="bytes-key"),
        pytest.param(_parts(_valid_header(v=_DROP)), "header_missing", "'v'", id="missing-v"),
        pytest.param(_parts(_valid_header(v=2)), "version", "2", id="version-2"),
        pytest.param(_parts(_valid_header(v="1")), "version", "'1'", id="version-str"),
        pytest.param(_parts(_valid_header(v=True)), "version", "True", id="version-bool"),
        pytest.param(_parts(_valid_header(t_ns=_DROP)), "header_missing", "['t_ns']", id="missing-t_ns"),
        pytest.param(_parts(_valid_header(foo=1, bar=2)), "header_extra", "['bar', 'foo']", id="extra-keys"),
        pytest.param(_parts(_valid_header(lag=0)), "header_extra", "denoised/", id="output-key-on-frames"),
        pytest.param(_parts(_valid_header(seq=-1)), "header_value", "seq must be >= 0, got -1", id="negative-seq"),
        pytest.param(_parts(_valid_header(seq=5.0)), "header_value", "float 5.0", id="float-seq"),
        pytest.param(_parts(_valid_header(seq=True)), "header_value", "bool", id="bool-seq"),
        pytest.param(_parts(_valid_header(n=0), payload=b""), "header_value", "n must be >= 1", id="n-zero"),
        pytest.param(_parts(_valid_header(t_ns="now")), "header_value", "t_ns", id="str-t_ns"),
        pytest.param(_parts(_valid_header(stream="")), "header_value", "0 characters", id="empty-stream"),
        pytest.param(_parts(_valid_header(stream=3)), "header_value", "int", id="int-stream"),
        pytest.param(_parts(_valid_header(stream="a\nb"), topic=b"frames/a\nb"), "header_value", "printable",
                     id="unprintable-stream"),
        pytest.param(_parts(_valid_header(fs=0)), "header_value", "fs", id="fs-zero"),
        pytest.param(_parts(_valid_header(fs=float("nan"))), "header_value", "fs", id="fs-nan"),
        pytest.param(_parts(_valid_header(meta=[1])), "header_value", "meta", id="meta-not-map"),
        pytest.param(_parts(_valid_header(dtype="<U2"), payload=bytes(8)), "dtype", "'<U2'", id="dtype-str"),
        pytest.param(_parts(_valid_header(dtype="|O"), payload=bytes(8)), "dtype", "'|O'", id="dtype-object"),
        pytest.param(_parts(_valid_header(dtype="|V2"), payload=bytes(8)), "dtype", "'|V2'", id="dtype-void"),
        pytest.param(_parts(_valid_header(dtype="u2"), payload=bytes(8)), "dtype", "'u2'", id="dtype-no-byteorder"),
        pytest.param(_parts(_valid_header(dtype="=f4"), payload=bytes(8)), "dtype", "'=f4'", id="dtype-native-order"),
        pytest.param(_parts(_valid_header(dtype=2), payload=bytes(8)), "dtype", "2", id="dtype-int"),
        pytest.param(_parts(_valid_header(shape=[]), payload=b""), "shape", "[]", id="shape-empty"),
        pytest.param(_parts(_valid_header(shape=[0]), payload=b""), "shape", "[0]", id="shape-zero"),
        pytest.param(_parts(_valid_header(shape=[1, 1, 1, 1])), "shape", "[1, 1, 1, 1]", id="shape-4d"),
        pytest.param(_parts(_valid_header(shape=4), payload=b""), "shape", "4", id="shape-int"),
        pytest.param(_parts(_valid_header(shape=[2.0]), payload=b""), "shape", "2.0", id="shape-float"),
        pytest.param(_parts(payload=bytes(300)), "payload_size",
                     "payload is 300 bytes, expected n×prod(shape)×itemsize = 2×4×2 = 16", id="payload-long"),
        pytest.param(_parts(payload=b""), "payload_size", "0 bytes", id="payload-empty"),
        pytest.param(_parts(_valid_header(n=2**40, shape=[152]), payload=bytes(8)), "too_large",
                     "1099511627776×152×2", id="huge-n"),
    ],
)
def test_every_rule_has_a_reason_and_shows_what_it_got(parts, reason, shown):
    with pytest.raises(WireError) as info:
        wire.decode(parts)
    assert info.value.reason == reason
    assert info.value.reason in wire.REASONS
    assert isinstance(info.value, ValueError)
    assert shown in str(info.value)


def test_denoised_headers_need_output_keys_and_right_types():
    base = _valid_header() | {"t_recv_ns": 1, "t_pub_ns": 2, "lag": 0, "model": "m", "gap": 0, "warm": False,
                              "epoch": 5}
    assert wire.decode(_parts(base, topic=b"denoised/rig1"))[1]["warm"] is False
    for key in wire.OUTPUT_KEYS:
        h = {k: v for k, v in base.items() if k != key}
        assert _reason(_parts(h, topic=b"denoised/rig1")) == "header_missing"
    for key, bad in [("warm", 1), ("lag", -1), ("gap", -2), ("model", 3), ("t_pub_ns", 1.5), ("epoch", -1)]:
        assert _reason(_parts(base | {key: bad}, topic=b"denoised/rig1")) == "header_value", key
    # kind= pins the topic kind
    assert _reason(_parts(), kind="denoised") == "topic"
    with pytest.raises(ValueError):
        wire.decode(_parts(), kind="raw")


def test_size_limits():
    big_meta = {"blob": "x" * 70_000}
    header = msgpack.packb(_valid_header(meta=big_meta))
    assert _reason([b"frames/rig1", header, bytes(16)]) == "too_large"
    # The limits are keyword arguments.
    assert wire.decode([b"frames/rig1", header, bytes(16)], max_header_bytes=len(header))[1]["meta"] == big_meta
    assert _reason(_parts(), max_header_bytes=10) == "too_large"
    assert _reason(_parts(), max_payload_bytes=15) == "too_large"  # actual payload 16 bytes
    # Announced size over the limit, actual payload small: rejected before any parsing of it.
    assert _reason(_parts(_valid_header(n=10**6), payload=bytes(16)), max_payload_bytes=1000) == "too_large"
    with pytest.raises(WireError) as e:  # encode refuses what decode would refuse
        wire.encode_frames("s", np.zeros((1, 4), "<u2"), seq=0, t_ns=0, meta=big_meta)
    assert e.value.reason == "too_large"


def test_topic_for():
    assert wire.topic_for("frames", "a/b") == b"frames/a/b"
    assert wire.topic_for("denoised") == b"denoised/"
    with pytest.raises(ValueError):
        wire.topic_for("raw", "a")
    with pytest.raises(WireError):
        wire.topic_for("frames", "")


def test_no_pickle_in_wire_module():
    src = Path(wire.__file__).read_text()
    assert not re.search(r"import\s+pickle|pickle\.|_pyobj", src)


# ----------------------------------------------------------------------------- fuzz

_VALID = wire.encode_frames("rig1", np.arange(8, dtype="<u2").reshape(2, 4), seq=5, t_ns=0, fs=10.0)
_VALID = [bytes(p) for p in _VALID]

_header_values = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1), st.floats(),
    st.text(max_size=10), st.binary(max_size=10), st.lists(st.integers(-3, 200), max_size=5),
    st.sampled_from(sorted(wire.DTYPES) + ["<U4", "|O", "f4", "<c8"]),
    st.dictionaries(st.text(max_size=3), st.integers(-(2**63), 2**63 - 1), max_size=3),
)
_header_keys = st.sampled_from(list(wire.REQUIRED_KEYS + wire.OPTIONAL_KEYS + wire.OUTPUT_KEYS) + ["x"])


@st.composite
def _messages(draw):
    """A valid message with some parts replaced by random bytes or random header maps."""
    parts = list(_VALID)
    choice = draw(st.integers(0, 3))
    if choice == 0:  # any part count, any bytes
        return draw(st.lists(st.binary(max_size=64), max_size=5))
    if choice == 1:  # one part replaced by random bytes
        i = draw(st.integers(0, 2))
        parts[i] = draw(st.binary(max_size=64))
        return parts
    if choice == 2:  # a valid header with random edits
        h = msgpack.unpackb(parts[1])
        h.update(draw(st.dictionaries(_header_keys, _header_values, max_size=4)))
        for k in draw(st.lists(_header_keys, max_size=2)):
            h.pop(k, None)
        parts[1] = msgpack.packb(h)
        parts[2] = draw(st.one_of(st.just(parts[2]), st.binary(max_size=64)))
        return parts
    # bytes of the valid header flipped / truncated
    raw = bytearray(parts[1])
    for _ in range(draw(st.integers(1, 4))):
        raw[draw(st.integers(0, len(raw) - 1))] = draw(st.integers(0, 255))
    parts[1] = bytes(raw[: draw(st.integers(0, len(raw)))])
    return parts


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_messages())
def test_fuzz_only_wire_errors(parts):
    try:
        topic, header, frames = wire.decode(parts)
    except WireError as e:
        assert e.reason in wire.REASONS
        return
    # Whatever decodes is consistent.
    assert frames.shape == (header["n"], *header["shape"])
    assert topic.split("/", 1)[1] == header["stream"]


# ----------------------------------------------------------------------------- docs/protocol.md


def _doc_block(name: str) -> str:
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    m = re.search(rf"<!-- example: {name} -->\s*```\w*\n(.*?)```", text, re.S)
    assert m, f"no '<!-- example: {name} -->' code block in {PROTOCOL_MD}"
    return m.group(1)


def _hexdump(b: bytes) -> str:
    lines = []
    for o in range(0, len(b), 16):
        c = b[o : o + 16]
        hx = " ".join(f"{x:02x}" for x in c)
        lines.append(f"{o:08x}  {hx:<47}  |" + "".join(chr(x) if 32 <= x < 127 else "." for x in c) + "|")
    return "\n".join(lines) + "\n"


def test_doc_hex_dump_is_what_encode_produces():
    parts = wire.encode_frames("rig1", np.array([[1, 2, 3, 4]], dtype="<u2"), seq=0,
                               t_ns=1_700_000_000_000_000_000, fs=100.0)
    assert parts[0] == b"frames/rig1"
    assert _doc_block("header-hex") == _hexdump(parts[1])
    assert _doc_block("payload-hex") == _hexdump(bytes(parts[2]))


@pytest.mark.timeout(30)
def test_doc_publisher_example_runs_and_decodes():
    import zmq

    code = _doc_block("publisher")
    assert "import rtdenoise" not in code and "from rtdenoise" not in code
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    try:
        sub.setsockopt(zmq.SUBSCRIBE, b"frames/")
        sub.bind("tcp://127.0.0.1:*")
        endpoint = sub.getsockopt(zmq.LAST_ENDPOINT).decode()
        assert code.count("tcp://127.0.0.1:5555") == 1
        code = code.replace("tcp://127.0.0.1:5555", endpoint)
        errors = []

        def run():
            try:
                exec(compile(code, str(PROTOCOL_MD), "exec"), {"__name__": "doc_example"})
            except BaseException as e:  # reported by the main thread
                errors.append(e)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        seqs = []
        while True:  # until the example has finished and everything has arrived
            if not sub.poll(5000 if not seqs else 300):
                break
            topic, header, frames = wire.decode(sub.recv_multipart(copy=False), kind="frames")
            assert topic == "frames/rig1" and header["fs"] == 100.0
            assert frames.shape == (1, 152) and frames.dtype == np.dtype("<u2")
            seqs.append(header["seq"])
        thread.join(10)
        assert not errors, errors
        assert not thread.is_alive()
        # Early frames may be lost to the slow joiner; the rest arrive in order.
        assert seqs and seqs == list(range(seqs[0], 50))
    finally:
        sub.close(linger=0)


def test_doc_lists_every_reason_key_and_dtype():
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    for reason in wire.REASONS:
        assert f"| `{reason}` |" in text, reason
    for key in wire.REQUIRED_KEYS + wire.OPTIONAL_KEYS + wire.OUTPUT_KEYS:
        assert f"| `{key}` |" in text, key
    for dtype in wire.DTYPES:
        if dtype[0] in "<>" and dtype[1:] not in ("u1", "i1"):
            assert f'`"{dtype}"`' in text, dtype
