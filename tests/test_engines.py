"""Engines: every backend streams like it runs offline, agrees with torch, and fails cleanly.

Backends available here (torch, onnxruntime) run everywhere; TensorRT cases are marked
``tensorrt``/``gpu`` and skip without TensorRT and a GPU. The TensorRT engine's binding
logic (shapes, addresses, state copies, chunk splitting, sidecar checks) also runs here
against a stand-in ``tensorrt`` module that executes the plan's ONNX with ONNX Runtime on
host buffers: it checks our code, not TensorRT.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import sys
import types

import numpy as np
import pytest
import torch

from rtdenoise.backends import load_engine

N_FRAMES = 80


def _require_trt():
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (pip install rtdenoise[tensorrt] on an NVIDIA GPU)")
    if not torch.cuda.is_available():
        pytest.skip("TensorRT needs an NVIDIA GPU; torch.cuda.is_available() is False")


def _require_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU; torch.cuda.is_available() is False")


BACKENDS = [
    pytest.param("torch", id="torch"),
    pytest.param("onnxruntime", id="ort"),
    pytest.param("tensorrt", id="trt", marks=[pytest.mark.tensorrt, pytest.mark.gpu]),
]

# (arch, lag, extra config): every arch, lags 0/1/3, a dilated trunk.
MODELS = [
    pytest.param("subspace", 0, {}, id="subspace-lag0"),
    pytest.param("subspace", 1, {}, id="subspace-lag1"),
    pytest.param("subspace", 3, {}, id="subspace-lag3"),
    pytest.param("spectral", 0, {}, id="spectral-lag0"),
    pytest.param("spectral", 1, {}, id="spectral-lag1"),
    pytest.param("spectral", 3, {"dilations": [1, 2, 4]}, id="spectral-lag3-dilated"),
    pytest.param("2d", 1, {"width": 4}, id="2d-lag1"),
]


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    """Factory ``engine(backend, arch, lag, **config)``, cached per module."""
    cache: dict = {}

    def make(backend: str, arch: str = "spectral", lag: int = 0, **kw):
        if backend == "tensorrt":
            _require_trt()
        key = (backend, arch, lag, tuple(sorted((k, str(v)) for k, v in kw.items())))
        if key not in cache:
            ckpt = tiny_checkpoint(arch, lag, **kw)
            cache[key] = load_engine(ckpt, backend=backend, **({"device": "cpu"} if backend == "torch" else {}))
        return cache[key]

    return make


def _stream(engine, x: np.ndarray, chunk: int, state=None) -> np.ndarray:
    """Step ``x`` (n, W) or (B, n, W) through ``engine.step`` in chunks along time."""
    batched = x.ndim == 3
    state = state or engine.new_state(x.shape[0] if batched else 1)
    outs = [engine.step(x[..., i : i + chunk, :], state) for i in range(0, x.shape[-2], chunk)]
    return np.concatenate(outs, axis=-2)


# ----------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("chunk", [pytest.param(1, id="chunk1"), pytest.param(2, id="chunk2"), pytest.param(7, id="chunk7"), pytest.param(N_FRAMES, id="whole")])
@pytest.mark.parametrize("arch,lag,kw", MODELS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_streaming_equals_offline(engine, noisy_frames, backend, arch, lag, kw, chunk):
    eng = engine(backend, arch, lag, **kw)
    x = noisy_frames(N_FRAMES)
    ref = eng.run(x)  # (T, W): offline, lag flushed
    assert ref.shape == x.shape and ref.dtype == np.float32
    y = _stream(eng, x, chunk)  # output i is frame i - lag
    scale = float(ref.std())
    np.testing.assert_allclose(y[lag:], ref[: N_FRAMES - lag], rtol=0, atol=1e-5 * scale)
    # the network does something: the identity would make most of these checks vacuous
    assert np.abs(ref - x).max() > 1e-2 * scale


@pytest.mark.parametrize("arch,lag,kw", MODELS)
def test_onnxruntime_equals_torch(engine, noisy_frames, arch, lag, kw):
    x = noisy_frames(N_FRAMES, seed=1)
    ref = engine("torch", arch, lag, **kw).run(x)
    got = engine("onnxruntime", arch, lag, **kw).run(x)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * float(ref.std()))


@pytest.mark.parametrize("spin", [pytest.param(True, id="spin"), pytest.param(False, id="no-spin")])
def test_onnxruntime_spinning_threads_give_the_same_result(tiny_checkpoint, noisy_frames, spin):
    from rtdenoise.backends.ort_engine import OrtEngine

    ckpt = tiny_checkpoint("spectral", 1)
    x = noisy_frames(20)
    ref = OrtEngine(ckpt, threads=1).run(x)
    got = OrtEngine(ckpt, threads=2, spin=spin).run(x)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * float(ref.std()))


@pytest.mark.parametrize("setting,kept", [pytest.param(None, True, id="default"), pytest.param("0", False, id="off")])
def test_keep_heap_is_on_by_default_and_off_by_environment(setting, kept):
    """glibc's mallopt is asked once per process (a fresh one here); RTDENOISE_KEEP_HEAP=0 leaves malloc alone."""
    import os
    import platform
    import subprocess
    import sys

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("keep_heap acts on glibc only")
    env = {k: v for k, v in os.environ.items() if k != "RTDENOISE_KEEP_HEAP"} | ({"RTDENOISE_KEEP_HEAP": setting} if setting else {})
    code = "from rtdenoise.backends.base import keep_heap; print(keep_heap(), keep_heap())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(kept)] * 2


@pytest.mark.parametrize("arch,lag,kw", [pytest.param("spectral", 1, {}, id="spectral-lag1"), pytest.param("subspace", 0, {}, id="subspace-lag0")])
@pytest.mark.parametrize("io_binding", [pytest.param(True, id="bound"), pytest.param(False, id="run")])
def test_onnxruntime_io_binding_same_result(tiny_checkpoint, noisy_frames, arch, lag, kw, io_binding):
    from rtdenoise.backends.ort_engine import OrtEngine

    ckpt = tiny_checkpoint(arch, lag, **kw)
    x = noisy_frames(30)
    ref = OrtEngine(ckpt, io_binding=False).run(x)
    eng = OrtEngine(ckpt, io_binding=io_binding)
    y = np.concatenate([_stream(eng, x[:15], 1), _stream(eng, x[15:], 1)])  # two states, bindings per state
    st = eng.new_state(1)
    y2 = np.concatenate([eng.step(x[i : i + c], st) for i, c in [(0, 1), (1, 3), (4, 1), (5, 25)]])
    tol = 1e-5 * float(ref.std())  # other chunkings: float rounding apart
    np.testing.assert_allclose(_stream(eng, x, 1)[lag:], ref[: 30 - lag], rtol=0, atol=tol)
    np.testing.assert_allclose(y2[lag:], ref[: 30 - lag], rtol=0, atol=tol)
    assert y.shape == x.shape


@pytest.mark.parametrize("lag", [pytest.param(0, id="lag0"), pytest.param(2, id="lag2")])
@pytest.mark.parametrize("arch", [pytest.param("spectral", id="spectral"), pytest.param("subspace", id="subspace")])
@pytest.mark.parametrize("backend", BACKENDS)
def test_causality(engine, noisy_frames, backend, arch, lag):
    eng = engine(backend, arch, lag)
    x = noisy_frames(N_FRAMES)
    t = 40
    x2 = x.copy()
    x2[t + 1 :] = noisy_frames(N_FRAMES, seed=7)[t + 1 :] * 3.0  # a different future
    y1, y2 = _stream(eng, x, 3), _stream(eng, x2, 3)
    scale = float(y1.std())
    np.testing.assert_allclose(y2[: t + 1], y1[: t + 1], rtol=0, atol=1e-6 * scale)  # output index <= t: frames <= t
    assert np.abs(y2[t + 1 :] - y1[t + 1 :]).max() > 1e-3 * scale  # and the future does matter after
    if lag == 0:
        r1, r2 = eng.run(x), eng.run(x2)
        np.testing.assert_allclose(r2[: t + 1], r1[: t + 1], rtol=0, atol=1e-6 * scale)


@pytest.mark.parametrize("arch,lag", [pytest.param("spectral", 1, id="spectral-lag1"), pytest.param("subspace", 2, id="subspace-lag2")])
@pytest.mark.parametrize("backend", BACKENDS)
def test_reset(engine, noisy_frames, backend, arch, lag):
    eng = engine(backend, arch, lag)
    xa, xb = noisy_frames(N_FRAMES, seed=2), noisy_frames(40, seed=3)
    fresh = _stream(eng, xb, 5)
    state = eng.new_state(1)
    _stream(eng, xa, 7, state)
    eng.reset(state)
    assert state.seen[0] == 0
    tol = 1e-5 * float(fresh.std())
    np.testing.assert_allclose(_stream(eng, xb, 5, state), fresh, rtol=0, atol=tol)
    # one stream of two: the other keeps its past
    both = eng.new_state(2)
    _stream(eng, np.stack([xa[:40], xa[40:]]), 4, both)
    keep = eng.new_state(2)
    _stream(eng, np.stack([xa[:40], xa[40:]]), 4, keep)
    eng.reset(both, 1)
    y = _stream(eng, np.stack([xb, xb]), 5, both)
    np.testing.assert_allclose(y[1], fresh, rtol=0, atol=tol)  # batch 2 vs 1: rounding apart
    np.testing.assert_allclose(y[0], _stream(eng, np.stack([xb, xb]), 5, keep)[0], rtol=0, atol=tol)
    assert np.abs(y[0] - y[1]).max() > 100 * tol  # stream 0 did keep a different past


@pytest.mark.parametrize("arch,lag", [pytest.param("spectral", 0, id="spectral-lag0"), pytest.param("subspace", 3, id="subspace-lag3"), pytest.param("2d", 1, id="2d-lag1")])
@pytest.mark.parametrize("backend", BACKENDS)
def test_batched_streams_equal_single(engine, noisy_frames, backend, arch, lag):
    eng = engine(backend, arch, lag, **({"width": 4} if arch == "2d" else {}))
    xa, xb = noisy_frames(50, seed=4), noisy_frames(50, seed=5) * 0.5
    together = _stream(eng, np.stack([xa, xb]), 7)
    assert together.shape == (2, 50, 152)
    alone = [_stream(eng, xa, 7), _stream(eng, xb, 7)]
    scale = float(alone[0].std())
    for i in range(2):
        np.testing.assert_allclose(together[i], alone[i], rtol=0, atol=1e-5 * scale)


# ----------------------------------------------------------------------------- flush


@pytest.mark.parametrize("arch,lag", [pytest.param("spectral", 0, id="spectral-lag0"), pytest.param("subspace", 3, id="subspace-lag3")])
@pytest.mark.parametrize("backend", BACKENDS)
def test_flush_gives_what_is_owed_then_a_fresh_stream(engine, noisy_frames, backend, arch, lag):
    eng = engine(backend, arch, lag)
    x, y = noisy_frames(30, seed=6), noisy_frames(20, seed=7)
    whole = eng.run(x)
    state = eng.new_state(1)
    stepped = _stream(eng, x, 4, state)
    owed = eng.flush(state)
    assert owed.shape == (lag, 152) and owed.dtype == np.float32
    tol = 1e-5 * float(whole.std())
    np.testing.assert_allclose(np.concatenate([stepped[lag:], owed]), whole, rtol=0, atol=tol)
    assert state.seen[0] == 0
    np.testing.assert_allclose(_stream(eng, y, 4, state), _stream(eng, y, 4), rtol=0, atol=tol)  # as new
    assert eng.flush(eng.new_state(1)).shape == (0, 152)  # nothing stepped, nothing owed


@pytest.mark.parametrize("backend", BACKENDS)
def test_flush_of_a_stream_shorter_than_the_lag_owes_only_its_frames(engine, noisy_frames, backend):
    eng = engine(backend, "subspace", 3)
    x = noisy_frames(2, seed=8)
    state = eng.new_state(1)
    eng.step(x, state)
    owed = eng.flush(state)
    assert owed.shape == (2, 152)
    np.testing.assert_allclose(owed, eng.run(x), rtol=0, atol=1e-5 * float(owed.std()))
    assert eng.run(x[:1]).shape == (1, 152)


@pytest.mark.parametrize("backend", BACKENDS)
def test_flush_with_last_frames_equals_step_then_flush(engine, noisy_frames, backend):
    eng = engine(backend, "subspace", 2)
    x = noisy_frames(20, seed=9)
    a, b = eng.new_state(1), eng.new_state(1)
    eng.step(x[:15], a)
    eng.step(x[:15], b)
    together = eng.flush(a, x[15:])
    apart = np.concatenate([eng.step(x[15:], b), eng.flush(b)])
    assert together.shape == (7, 152)
    np.testing.assert_allclose(together, apart, rtol=0, atol=1e-5 * float(apart.std()))
    with pytest.raises(ValueError, match="NaN"):
        eng.flush(eng.new_state(1), np.full((2, 152), np.nan))


# ----------------------------------------------------------------------------- bad input

W = 152
BAD = [
    pytest.param(lambda x: x[:3, :150], ValueError, r"\(152,\).*\(150,\)", id="width150"),
    pytest.param(lambda x: x[0], ValueError, "expected frames of shape", id="ndim1"),
    pytest.param(lambda x: x[None, None, :3], ValueError, "expected frames of shape", id="ndim4"),
    pytest.param(lambda x: x[:3].astype(object), TypeError, "dtype object", id="dtype-object"),
    pytest.param(lambda x: np.full((3, W), "1"), TypeError, "dtype <U1", id="dtype-str"),
    pytest.param(lambda x: x[:0], ValueError, "at least 1 frame", id="zero-frames"),
    pytest.param(lambda x: np.where(np.arange(W) == 9, np.nan, x[:3]), ValueError, "NaN", id="nan"),
    pytest.param(lambda x: np.stack([x[:3], x[:3]]), ValueError, "2 streams", id="two-streams-for-one"),
]


@pytest.mark.parametrize("bad,exc,match", BAD)
@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_chunk_raises_and_leaves_state(engine, noisy_frames, backend, bad, exc, match):
    eng = engine(backend, "subspace", 2)
    x = noisy_frames(30)
    ref_state = eng.new_state(1)
    ref = _stream(eng, x, 5, ref_state)
    state = eng.new_state(1)
    first = eng.step(x[:10], state)
    with pytest.raises(exc, match=match):
        eng.step(bad(x[10:]), state)
    assert state.seen[0] == 10
    rest = eng.step(x[10:], state)
    np.testing.assert_allclose(np.concatenate([first, rest]), ref, rtol=0, atol=1e-5 * float(ref.std()))


def test_batch_must_be_positive(engine):
    with pytest.raises(ValueError, match="batch must be >= 1"):
        engine("onnxruntime").new_state(0)


# ----------------------------------------------------------------------------- export

EXPORTS = [
    pytest.param("spectral", 0, {}, id="spectral-lag0"),  # delay.previous has no rows: omitted
    pytest.param("subspace", 2, {}, id="subspace-lag2"),
    pytest.param("2d", 1, {"width": 4}, id="2d-lag1"),
    pytest.param("spectral", 0, {"kernel_t": 1}, id="kernel1-no-states"),  # no state at all
]


@pytest.mark.parametrize("arch,lag,kw", EXPORTS)
def test_export_onnx(tiny_checkpoint, tmp_path, arch, lag, kw):
    import onnx

    from rtdenoise.backends.export import checkpoint_from_onnx, export_onnx, read_onnx_metadata

    ckpt = tiny_checkpoint(arch, lag, **kw)
    path = export_onnx(ckpt, tmp_path / "sub" / "m.onnx")
    assert path.exists() and not list(path.parent.glob("*.tmp"))
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    net = ckpt.model()
    shapes = net.state_shapes(1)
    kept = [n for n in net.state_names() if 0 not in shapes[n]]
    assert [i.name for i in model.graph.input] == ["feat", *kept]
    assert [o.name for o in model.graph.output] == ["out", *[n + ".out" for n in kept]]
    assert all(n.count(".") >= 1 for n in kept)  # dotted state names, e.g. layers.0.previous
    meta = read_onnx_metadata(path)
    info = meta["checkpoint"]
    for key in ("name", "config", "lag", "receptive_field", "fs", "normalization", "format_version", "wavelengths"):
        assert info[key] == ckpt.info()[key], key
    assert meta["io"]["states"] == kept
    assert sorted(meta["io"]["omitted_states"] + kept) == sorted(net.state_names())
    back = checkpoint_from_onnx(path)
    assert back.config == ckpt.config and back.name == ckpt.name and back.lag == ckpt.lag
    assert set(back.state_dict) == set(ckpt.state_dict)
    for k, v in ckpt.state_dict.items():
        torch.testing.assert_close(back.state_dict[k], v, rtol=0, atol=0)


@pytest.mark.parametrize("arch,lag,kw", EXPORTS)
def test_load_engine_from_onnx_file(tiny_checkpoint, noisy_frames, tmp_path, arch, lag, kw):
    from rtdenoise.backends.export import export_onnx

    ckpt = tiny_checkpoint(arch, lag, **kw)
    path = export_onnx(ckpt, tmp_path / "m.onnx")
    x = noisy_frames(40)
    ref = load_engine(ckpt, backend="torch", device="cpu").run(x)
    ort = load_engine(str(path), backend="onnxruntime")
    assert ort.onnx_path == str(path) and ort.name == ckpt.name and ort.lag == lag
    np.testing.assert_allclose(ort.run(x), ref, rtol=1e-4, atol=1e-4 * float(ref.std()))
    np.testing.assert_allclose(load_engine(path, backend="torch", device="cpu").run(x), ref, rtol=0, atol=0)
    if not torch.cuda.is_available():
        assert load_engine(path, backend="auto").backend == "onnxruntime"


def test_onnx_errors(tiny_checkpoint, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from rtdenoise.backends.export import export_onnx, read_onnx_metadata
    from rtdenoise.backends.ort_engine import OrtEngine

    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_onnx_metadata(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a protobuf at all \x00\xff")
    with pytest.raises(ValueError, match="not a readable ONNX file|not an rtdenoise export"):
        read_onnx_metadata(tmp_path / "junk.onnx")
    g = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(g), str(tmp_path / "other.onnx"))
    with pytest.raises(ValueError, match="not an rtdenoise export"):
        load_engine(str(tmp_path / "other.onnx"), backend="onnxruntime")
    path = export_onnx(tiny_checkpoint("spectral", 1), tmp_path / "lag1.onnx")
    with pytest.raises(ValueError, match="another config"):
        OrtEngine(tiny_checkpoint("spectral", 0), onnx_path=path)
    with pytest.raises(TypeError, match="Checkpoint"):
        export_onnx("spectral-lag0", tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="backend='tensorrt'"):
        load_engine(str(tmp_path / "x.plan"), backend="onnxruntime")


# ----------------------------------------------------------------------------- CLI


def test_cli_export(tiny_checkpoint, tmp_path, capsys):
    from rtdenoise.backends.export import read_onnx_metadata
    from rtdenoise.cli import main

    ckpt = tiny_checkpoint("subspace", 1, name="tiny-cli")
    ckpt.save(tmp_path / "tiny.pt")
    out = tmp_path / "engines" / "tiny.onnx"
    assert main(["export", str(tmp_path / "tiny.pt"), "--onnx", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.exists() and str(out) in printed
    assert "layers.0.previous" in printed and "taps.previous.out" in printed
    assert read_onnx_metadata(out)["checkpoint"]["name"] == "tiny-cli"


def test_cli_build_engine_without_tensorrt(tiny_checkpoint, tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here; this checks the message where it is not")
    except ImportError:
        pass
    from rtdenoise.cli import main

    tiny_checkpoint("spectral", 0).save(tmp_path / "tiny.pt")
    rc = main(["build-engine", str(tmp_path / "tiny.pt"), "--plan", str(tmp_path / "tiny.plan")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "pip install rtdenoise[tensorrt]" in err and "NVIDIA GPU" in err
    assert not (tmp_path / "tiny.plan").exists()
    with pytest.raises(ImportError, match=r"rtdenoise\[tensorrt\]"):
        load_engine(tiny_checkpoint("spectral", 0), backend="tensorrt")


# ----------------------------------------------------------------------------- TensorRT logic, stand-in TensorRT


class _HostDevice:
    """``trt_engine._CudaDevice`` on host memory: CPU tensors, no stream."""

    handle = 0

    def __init__(self, index: int = 0):
        pass

    def zeros(self, shape):
        return torch.zeros(tuple(shape))

    host = zeros

    def on_stream(self):
        return contextlib.nullcontext()

    def synchronize(self):
        pass

    def info(self):
        return {"name": "Stand-in GPU", "compute_capability": [9, 0], "cuda": None}


def _fake_tensorrt() -> types.ModuleType:
    """Just the TensorRT 10 Python API that trt_engine uses; plans are ONNX run by ORT."""
    import onnx
    import onnxruntime as ort

    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.0.0-standin"
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=None: None})
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="workspace")
    trt.BuilderFlag = types.SimpleNamespace(FP16="fp16")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="input", OUTPUT="output")
    trt.DataType = types.SimpleNamespace(FLOAT="float")

    class Network:
        onnx = None
        names: list = []

        @property
        def num_inputs(self):
            return len(self.names)

        def get_input(self, i):
            return types.SimpleNamespace(name=self.names[i])

    class Parser:
        num_errors = 0

        def __init__(self, network, logger):
            self.network = network

        def parse(self, data):
            self.network.onnx = bytes(data)
            self.network.names = [i.name for i in onnx.load_from_string(data).graph.input]
            return True

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, opt, hi):
            assert len(lo) == len(opt) == len(hi)
            self.shapes[name] = [list(lo), list(hi)]

    class Config:
        def __init__(self):
            self.profiles, self.flags = [], []

        def set_memory_pool_limit(self, pool, size):
            assert size > 0

        def set_flag(self, flag):
            self.flags.append(flag)

        def add_optimization_profile(self, p):
            self.profiles.append(p)

    class Builder:
        platform_has_fast_fp16 = True

        def __init__(self, logger):
            pass

        def create_network(self, flags=0):
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            (profile,) = config.profiles
            assert set(profile.shapes) == set(network.names)
            head = json.dumps(profile.shapes).encode()
            return b"PLAN" + len(head).to_bytes(4, "little") + head + network.onnx

    class Context:
        def __init__(self, engine):
            self.engine, self.shapes, self.addr = engine, {}, {}

        def set_input_shape(self, name, shape):
            lo, hi = self.engine.profile[name]
            ok = all(a <= s <= b for a, s, b in zip(lo, shape, hi)) and len(shape) == len(lo)
            if ok:
                self.shapes[name] = tuple(shape)
            return ok

        def set_tensor_address(self, name, ptr):
            self.addr[name] = int(ptr)
            return True

        def execute_async_v3(self, stream):
            def view(name, shape):
                n = int(np.prod(shape))
                return np.ctypeslib.as_array((ctypes.c_float * max(n, 1)).from_address(self.addr[name]))[:n].reshape(shape)

            feed = {n: view(n, self.shapes[n]).copy() for n in self.engine.inputs}
            outs = self.engine.session.run(self.engine.outputs, feed)
            for name, v in zip(self.engine.outputs, outs):
                view(name, v.shape)[...] = v
            return True

    class Engine:
        def __init__(self, plan):
            k = int.from_bytes(plan[4:8], "little")
            self.profile = json.loads(plan[8 : 8 + k])
            self.session = ort.InferenceSession(plan[8 + k :], providers=["CPUExecutionProvider"])
            self.inputs = [i.name for i in self.session.get_inputs()]
            self.outputs = [o.name for o in self.session.get_outputs()]
            self.num_io_tensors = len(self.inputs) + len(self.outputs)

        def get_tensor_name(self, i):
            return (self.inputs + self.outputs)[i]

        def get_tensor_mode(self, name):
            return trt.TensorIOMode.INPUT if name in self.inputs else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return trt.DataType.FLOAT

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan):
            return Engine(bytes(plan)) if bytes(plan[:4]) == b"PLAN" else None

    trt.Builder, trt.OnnxParser, trt.Runtime = Builder, Parser, Runtime
    return trt


@pytest.fixture
def standin_trt(monkeypatch):
    """The TensorRT engine's code on host memory with a stand-in ``tensorrt`` module."""
    from rtdenoise.backends import trt_engine

    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt())
    monkeypatch.setattr(trt_engine, "_device_for", _HostDevice)
    return trt_engine


@pytest.mark.parametrize("arch,lag,kw", EXPORTS)
def test_trt_engine_logic_with_standin(standin_trt, tiny_checkpoint, noisy_frames, tmp_path, arch, lag, kw):
    ckpt = tiny_checkpoint(arch, lag, **kw)
    plan = standin_trt.build_plan(ckpt, tmp_path / "m.plan", max_batch=2, max_chunk=4)
    info = json.loads((tmp_path / "m.plan.json").read_text())
    assert info["tensorrt"] == "10.0.0-standin" and info["gpu"]["name"] == "Stand-in GPU"
    assert info["max_batch"] == 2 and info["max_chunk"] == 4 and info["model"]["checkpoint"]["name"] == ckpt.name
    x = noisy_frames(30)
    ref = load_engine(ckpt, backend="onnxruntime").run(x)
    eng = load_engine(str(plan), backend="tensorrt")  # model from the sidecar alone
    assert eng.backend == "tensorrt" and eng.lag == lag
    scale = float(ref.std())
    np.testing.assert_allclose(eng.run(x), ref, rtol=0, atol=1e-5 * scale)  # 30-frame chunks split by 4
    np.testing.assert_allclose(_stream(eng, x, 1)[lag:], ref[: 30 - lag], rtol=0, atol=1e-5 * scale)
    both = _stream(eng, np.stack([x, x * 0.5]), 3)
    np.testing.assert_allclose(both[0, lag:], ref[: 30 - lag], rtol=0, atol=1e-5 * scale)
    with pytest.raises(ValueError, match="at most 2 streams"):
        eng.new_state(3)
    state = eng.new_state(1)
    _stream(eng, x, 2, state)
    eng.reset(state)
    np.testing.assert_allclose(_stream(eng, x, 5, state)[lag:], ref[: 30 - lag], rtol=0, atol=1e-5 * scale)
    # A stream's rows of a 2-stream state, stepped alone (the service's slots), and stepped with the other
    group = eng.new_state(2)
    half = _stream(eng, x[:15], 1, eng.slot(group, 1))
    rest = _stream(eng, np.stack([x[15:] * 0.5, x[15:]]), 5, group)[1]
    np.testing.assert_allclose(np.concatenate([half, rest])[lag:], ref[: 30 - lag], rtol=0, atol=1e-5 * scale)
    # TensorRT wants 256-byte aligned addresses: slots only where every state's rows are a multiple of that
    rows = [4 * int(np.prod(v[1:])) for v in eng.state_shapes(1, eng.frame_shape).values()]
    assert eng.slot_limit(eng.frame_shape) == (2 if all(r % 256 == 0 for r in rows) else 1)


@pytest.mark.parametrize(
    "field,value,match",
    [
        pytest.param("tensorrt", "10.1.0", "TensorRT 10.1.0", id="other-tensorrt"),
        pytest.param("gpu", {"name": "NVIDIA A100", "compute_capability": [8, 0]}, "NVIDIA A100", id="other-gpu"),
        pytest.param("plan_sha256", "0" * 64, "checksum", id="other-plan"),
    ],
)
def test_trt_refuses_foreign_plan(standin_trt, tiny_checkpoint, tmp_path, field, value, match):
    ckpt = tiny_checkpoint("spectral", 1)
    plan = standin_trt.build_plan(ckpt, tmp_path / "m.plan")
    side = tmp_path / "m.plan.json"
    info = json.loads(side.read_text())
    info[field] = value
    side.write_text(json.dumps(info))
    with pytest.raises(ValueError, match=match) as e:
        standin_trt.TrtEngine(ckpt, plan_path=plan)
    assert "rebuild" in str(e.value)


def test_trt_plan_errors(standin_trt, tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("spectral", 1)
    with pytest.raises(FileNotFoundError, match="build-engine"):
        standin_trt.TrtEngine(ckpt, plan_path=tmp_path / "none.plan")
    plan = standin_trt.build_plan(ckpt, tmp_path / "m.plan")
    with pytest.raises(ValueError, match="another config"):
        standin_trt.TrtEngine(tiny_checkpoint("spectral", 0), plan_path=plan)
    (tmp_path / "m.plan.json").unlink()
    with pytest.raises(ValueError, match="no sidecar"):
        standin_trt.TrtEngine(ckpt, plan_path=plan)


def test_cli_build_engine_with_standin(standin_trt, tiny_checkpoint, tmp_path, capsys):
    from rtdenoise.backends.export import export_onnx
    from rtdenoise.cli import main

    ckpt = tiny_checkpoint("subspace", 1)
    onnx_path = export_onnx(ckpt, tmp_path / "tiny.onnx")
    plan = tmp_path / "engines" / "tiny.plan"
    assert main(["build-engine", str(onnx_path), "--plan", str(plan), "--max-batch", "4", "--max-chunk", "8"]) == 0
    assert "Stand-in GPU" in capsys.readouterr().out
    info = standin_trt.read_plan_info(plan)
    assert (info["max_batch"], info["max_chunk"], info["fp16"]) == (4, 8, False)


# ----------------------------------------------------------------------------- real GPU only


@pytest.mark.tensorrt
@pytest.mark.gpu
@pytest.mark.parametrize("fp16", [pytest.param(False, id="fp32"), pytest.param(True, id="fp16")])
def test_trt_plan_roundtrip(tiny_checkpoint, noisy_frames, tmp_path, fp16):
    _require_trt()
    from rtdenoise.backends.trt_engine import TrtEngine, build_plan

    ckpt = tiny_checkpoint("spectral", 1)
    plan = build_plan(ckpt, tmp_path / "m.plan", fp16=fp16, max_batch=4, max_chunk=16)
    x = noisy_frames(N_FRAMES)
    ref = load_engine(ckpt, backend="onnxruntime").run(x)
    got = TrtEngine(ckpt, plan_path=plan).run(x)
    tol = 2e-2 if fp16 else 1e-4
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * float(ref.std()))


@pytest.mark.gpu
@pytest.mark.parametrize("arch,lag", [pytest.param("spectral", 1, id="spectral-lag1"), pytest.param("subspace", 2, id="subspace-lag2")])
def test_torch_cuda_graph_step(tiny_checkpoint, noisy_frames, arch, lag):
    _require_cuda()
    ckpt = tiny_checkpoint(arch, lag)
    x = noisy_frames(N_FRAMES)
    ref = load_engine(ckpt, backend="torch", device="cpu").run(x)
    graphed = load_engine(ckpt, backend="torch", device="cuda")
    assert graphed.cuda_graph
    st = graphed.new_state(2)
    y = _stream(graphed, np.stack([x, x]), 1, st)  # replays the captured graph
    assert st.net.graph is not None
    scale = float(ref.std())
    for i in range(2):
        np.testing.assert_allclose(y[i, lag:], ref[: N_FRAMES - lag], rtol=1e-4, atol=1e-4 * scale)
    graphed.reset(st)
    y2 = _stream(graphed, np.stack([x, x]), 1, st)
    np.testing.assert_allclose(y2, y, rtol=0, atol=1e-5 * scale)
