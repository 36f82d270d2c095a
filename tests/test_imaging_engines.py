"""Imaging models behind the engines: movies (T, H, W) of any frame size, torch and ONNX Runtime.

Random weights (the engine path, not the quality, is under test); quality is the imaging
benchmark's business.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtdenoise.backends import load_engine
from rtdenoise.model.checkpoint import Checkpoint
from rtdenoise.model.config import ModelConfig

BACKENDS = [pytest.param("torch", id="torch"), pytest.param("onnxruntime", id="ort")]
LEAKY = "imaging-unet+leaky"  # the U-Net with leaky integrators of the input (config.rates)
ARCHS = [pytest.param("imaging-unet", id="unet"), pytest.param("imaging-fact", id="factorized"),
         pytest.param(LEAKY, id="unet-leaky")]


@pytest.fixture(scope="module")
def imaging_engine():
    cache: dict = {}

    def make(backend: str, arch: str = "imaging-unet", lag: int = 2):
        key = (backend, arch, lag)
        if key not in cache:
            rates = [0.5, 0.1] if arch == LEAKY else []
            cfg = ModelConfig(arch=arch.removesuffix("+leaky"), depth=3, width=4, lag=lag, floor=1.0, horizon=20, rates=rates)
            torch.manual_seed(0)
            net = cfg.build()
            with torch.no_grad():
                net.out.conv.weight.normal_(0.0, 0.2)  # a real correction, not the near-identity of a fresh model
            cache[key] = load_engine(Checkpoint(f"tiny-{arch}", cfg, net.state_dict(), fs=30.0), backend=backend)
        return cache[key]

    return make


@pytest.fixture(scope="module")
def movie():
    rng = np.random.default_rng(0)
    return rng.poisson(rng.uniform(1, 20, (1, 37, 53)), (30, 37, 53)).astype(np.uint16)  # odd sizes: padded inside


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_movie_in_gives_as_many_frames_out_whatever_the_chunking(imaging_engine, movie, backend, arch):
    eng = imaging_engine(backend, arch)
    assert eng.checkpoint.modality == "imaging" and eng.frame_shape == (None, None)
    whole = eng.run(movie)
    assert whole.shape == movie.shape and whole.dtype == np.float32
    scale = float(whole.std())
    np.testing.assert_allclose(eng.run(movie, chunk=1), whole, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(eng.run(movie, chunk=7), whole, rtol=0, atol=1e-5 * scale)
    assert np.abs(whole - movie).mean() > 0.01 * scale  # the network did act


@pytest.mark.parametrize("arch", ARCHS)
def test_onnxruntime_equals_torch_on_any_frame_size(imaging_engine, movie, arch):
    a, b = imaging_engine("torch", arch).run(movie), imaging_engine("onnxruntime", arch).run(movie)
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * float(a.std()))
    small = movie[:, :20, :31]  # another size through the same exported graph
    np.testing.assert_allclose(imaging_engine("onnxruntime", arch).run(small), imaging_engine("torch", arch).run(small),
                               rtol=0, atol=1e-5 * float(a.std()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_stream_state_takes_its_shape_from_the_first_frames(imaging_engine, movie, backend):
    eng = imaging_engine(backend)
    state = eng.new_state(1)
    assert state.shape is None
    eng.step(movie[:3], state)
    assert state.shape == (37, 53)
    with pytest.raises(ValueError, match=r"the stream started with \(37, 53\)"):
        eng.step(movie[:2, :32, :32], state)
    assert state.seen[0] == 3
    owed = eng.flush(state)
    assert owed.shape == (2, 37, 53)


BAD = [
    pytest.param(lambda m: m[:, 0, :], ValueError, "denoises images", id="spectra"),
    pytest.param(lambda m: np.stack([m] * 3, axis=-1), ValueError, "colour image", id="colour"),
    pytest.param(lambda m: m[:, :8, :8], ValueError, "smaller than this model's 16 × 16", id="tiny"),
    pytest.param(lambda m: np.where(np.arange(53) == 5, np.nan, m.astype(np.float32)), ValueError, "NaN", id="nan"),
    pytest.param(lambda m: m[:0], ValueError, "at least 1 frame", id="empty"),
]


@pytest.mark.parametrize("bad,exc,match", BAD)
def test_bad_movies_get_clear_errors(imaging_engine, movie, bad, exc, match):
    with pytest.raises(exc, match=match):
        imaging_engine("torch").run(bad(movie))


def _steps(eng, x, chunks, reset_at=None):
    """Step the (B, n, H, W) movie ``x`` in chunks of the given lengths, resetting stream 1 at
    frame ``reset_at``; then flush the last 4 frames: every output, in order."""
    st, out, i = eng.new_state(x.shape[0]), [], 0
    for c in chunks:
        if i == reset_at:
            eng.reset(st, 1)
        out.append(eng.step(x[:, i : i + c], st))
        i += c
    out.append(eng.flush(st, x[:, i : i + 4]))
    return np.concatenate(out, axis=1), st


@pytest.mark.parametrize("register", [pytest.param(False, id="still"), pytest.param(True, id="follows-motion")])
@pytest.mark.parametrize("lag", [pytest.param(0, id="lag0"), pytest.param(2, id="lag2")])
def test_the_front_end_on_the_engines_device_gives_the_host_front_ends_outputs(imaging_engine, movie, lag, register):
    """What CUDA runs (the front end as tensors beside the network), checked here on the CPU:
    the same outputs (to a float32 rounding: the statistics are float32, summed in two orders),
    through chunks, a reset of one stream and a flush; also with a baseline that follows motion."""
    import dataclasses

    from rtdenoise.backends.torch_engine import TorchEngine, TorchFrontEnd

    ck = imaging_engine("torch", lag=lag).checkpoint
    if register:
        ck = Checkpoint(ck.name, dataclasses.replace(ck.config, register=True), ck.state_dict, fs=ck.fs)
    host, dev = TorchEngine(ck, device="cpu"), TorchEngine(ck, device="cpu", device_frontend=True)
    x = np.stack([movie[:26], movie[4:30]]).astype(">u2")  # big-endian: the wire allows it, torch needs a copy
    x.flags.writeable = False  # as the service's frames (views of the received message)
    chunks = [1, 3, 1, 5, 2, 6, 4]  # 22 frames, then 4 flushed
    a, sa = _steps(host, x, chunks, reset_at=10)
    b, sb = _steps(dev, x, chunks, reset_at=10)
    assert isinstance(sb.frontend, TorchFrontEnd) and not isinstance(sa.frontend, TorchFrontEnd)
    assert a.shape == b.shape == (2, 26 + lag, 37, 53)  # the first `lag` outputs belong to no frame
    # float32 statistics (and FFTs) in two libraries' orders: equal to a float32 rounding of the frame's scale
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * float(np.abs(a).max()))


@pytest.mark.gpu
def test_cuda_graph_with_the_front_end_on_the_gpu_equals_the_cpu(imaging_engine, movie):
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU; torch.cuda.is_available() is False")
    from rtdenoise.backends.torch_engine import TorchFrontEnd

    ck = imaging_engine("torch").checkpoint
    cpu = load_engine(ck, backend="torch", device="cpu")
    gpu = load_engine(ck, backend="torch", device="cuda")
    x = np.stack([movie[:26], movie[4:30]])
    chunks = [1] * 10 + [3] + [1] * 9  # one-frame steps replay the graph; the 3-frame one runs eagerly
    a, _ = _steps(cpu, x, chunks, reset_at=10)
    b, st = _steps(gpu, x, chunks, reset_at=10)
    assert isinstance(st.frontend, TorchFrontEnd) and st.net.graph is not None
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4 * float(a.std()))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_a_float16_network_stays_near_float32_and_keeps_float32_states(imaging_engine, movie, device):
    """``half=True`` runs the network under float16 autocast; states stay float32 (their
    addresses and dtype are what a CUDA graph holds), outputs within float16's rounding."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU; torch.cuda.is_available() is False")
    ck = imaging_engine("torch").checkpoint
    full = load_engine(ck, backend="torch", device=device)
    half = load_engine(ck, backend="torch", device=device, half=True)
    x = np.stack([movie[:26], movie[4:30]])
    chunks = [1] * 10 + [3] + [1] * 9
    a, _ = _steps(full, x, chunks, reset_at=10)
    b, st = _steps(half, x, chunks, reset_at=10)
    assert b.dtype == np.float32 and all(v.dtype == torch.float32 for v in st.net.values())
    err = np.abs(b - a).max() / float(a.max() - a.min())
    assert 0 < err < 5e-3  # float16 keeps 11 bits: not bit-equal, and not further than rounding


def test_tensorrt_refuses_an_imaging_model_with_the_fix(imaging_engine):
    pytest.importorskip("onnx")
    from rtdenoise.backends.export import export_onnx, read_onnx_metadata
    from rtdenoise.backends.trt_engine import _require_fixed_frames

    io = read_onnx_metadata(export_onnx(imaging_engine("torch").checkpoint))["io"]
    assert io["n_features"] is None and io["state_shapes"]["delay.previous"] == [2, 1, None, None]
    with pytest.raises(ValueError, match="backend='onnxruntime'"):
        _require_fixed_frames(io)


def test_the_live_service_denoises_a_movie_as_offline_unchanged(imaging_engine, movie):
    """A second modality needs no change to the service: frames (H, W) in, the same frames out."""
    import contextlib
    import time

    import zmq

    from rtdenoise.stream import Service, Subscriber, wire

    eng = imaging_engine("onnxruntime", "imaging-unet", 2)
    ref = eng.run(movie)
    with Service(engine=eng, sub="tcp://127.0.0.1:*", bind_sub=True, pub="tcp://127.0.0.1:*",
                 control="ipc://*") as svc:
        pub = zmq.Context.instance().socket(zmq.PUB)
        pub.connect(svc.sub_address)
        sub = Subscriber(svc.pub_address)
        try:
            got, deadline, seq = {}, time.monotonic() + 10, 0
            while "probe" not in got:  # slow joiner: both connections are up once a probe comes back
                assert time.monotonic() < deadline, "service never answered the probe"
                pub.send_multipart(wire.encode_frames("probe", movie[:1], seq=seq, t_ns=seq))
                seq += 1
                with contextlib.suppress(TimeoutError):
                    h, _ = sub.recv(timeout=0.05)
                    got[h["stream"]] = True
            for i in range(len(movie)):
                pub.send_multipart(wire.encode_frames("cam0", movie[i : i + 1], seq=i, t_ns=i))
            pub.send_multipart(wire.encode_frames("cam0", movie[:1, :16, :16], seq=len(movie), t_ns=0))  # a new size
            out = np.full(movie.shape, np.nan, np.float32)
            while np.isnan(out[: -eng.lag]).any():
                h, frames = sub.recv(timeout=5.0)
                if h["stream"] == "cam0":
                    out[h["seq"] : h["seq"] + h["n"]] = frames
            np.testing.assert_allclose(out[: -eng.lag], ref[: -eng.lag], rtol=0, atol=1e-4 * float(ref.std()))
            stats = svc.stats()
            assert stats["streams"]["cam0"]["rejected"] == 1 and stats["rejected_by_reason"]["shape_change"] == 1
        finally:
            pub.close(linger=0)
            sub.close()


def test_admission_refuses_a_new_stream_of_frames_too_small_by_the_models_own_rule(imaging_engine):
    from rtdenoise.stream import admission

    eng = imaging_engine("torch")
    limits = admission.Limits(eng.frame_shape, 4, eng.name, check_shape=eng.check_shape)
    header = {"stream": "cam", "seq": 0, "n": 1, "shape": [8, 8]}
    verdict = admission.admit(header, np.zeros((1, 8, 8), "<f4"), {}, limits, check_frames=eng.check_frames)
    assert (verdict.reason, verdict.new) == ("frame_shape", False) and "16 × 16" in verdict.message
    ok = admission.admit(header | {"shape": [40, 64]}, np.zeros((1, 40, 64), "<u2"), {}, limits,
                         check_frames=eng.check_frames)
    assert ok.accepted and ok.new
