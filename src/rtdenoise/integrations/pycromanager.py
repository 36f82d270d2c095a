"""Denoise Micro-Manager images live: an image processor for pycro-manager.

pycro-manager calls an ``image_process_fn(image, metadata)`` on every image it acquires
and saves and shows what it returns. :func:`denoise_processor` makes one that sends each
image to a running ``rtdenoise serve`` (an imaging model, lag 0) and returns the denoised
image in the input's dtype (pycro-manager keeps the camera's dtype: integer output is
rounded and clipped to the dtype's range) with the image's own metadata. It never stalls
the acquisition: when no denoised image comes back within ``timeout_s`` (no service, a
service still starting, a lookahead model), the raw image goes on, and the metadata says
so; later images then do not wait at all until the service answers again. pycromanager itself is not needed to use or test it.

Examples
--------
Start the service, then the acquisition::

    rtdenoise serve --bind-sub --sub tcp://127.0.0.1:5555 --pub tcp://127.0.0.1:5556 --model imaging-lag0

    from pycromanager import Acquisition, multi_d_acquisition_events
    from rtdenoise.integrations.pycromanager import denoise_processor

    with denoise_processor(stream="scope1") as denoise, \\
            Acquisition(directory="data", name="run", image_process_fn=denoise) as acq:
        acq.acquire(multi_d_acquisition_events(num_time_points=1000))
    print(denoise.counts)          # {'denoised': 998, 'raw': 2}

Each image's metadata gets an ``"rtdenoise"`` entry: ``{"denoised": true, "seq": 17,
"latency_ms": 3.1, "model": "imaging-lag0"}``, or ``{"denoised": false, "seq": 0,
"reason": "..."}``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from rtdenoise.stream.client import Publisher, Subscriber

__all__ = ["DenoiseProcessor", "denoise_processor"]


class DenoiseProcessor:
    """A pycro-manager image processor backed by a running service (see the module).

    Parameters
    ----------
    sub : str
        The service's input endpoint (``serve --bind-sub --sub ...``): images go there.
    pub : str
        The service's output endpoint: denoised images come from there.
    stream : str
        The stream name this microscope's images go under.
    timeout_s : float
        How long one image may wait for its denoised version before the raw one goes on.
    fs : float, optional
        The frame rate in Hz, sent with each image.
    curve_keys : optional
        ``(client_secret_key_file, server_public_key_file)`` for a CURVE service.

    Attributes
    ----------
    counts : dict
        Images returned ``denoised`` and ``raw``.
    """

    def __init__(self, sub: str = "tcp://127.0.0.1:5555", pub: str = "tcp://127.0.0.1:5556", *,
                 stream: str = "micromanager", timeout_s: float = 0.5, fs: float | None = None, curve_keys=None):
        if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
            raise ValueError(f"timeout_s must be seconds > 0, got {timeout_s!r}")
        self.timeout_s = float(timeout_s)
        self.stream = stream
        self._sub = Subscriber(pub, streams=stream, curve_keys=curve_keys, drop_invalid=True)
        try:
            self._pub = Publisher(sub, stream=stream, fs=fs, curve_keys=curve_keys)
        except Exception:
            self._sub.close()
            raise
        self.counts = {"denoised": 0, "raw": 0}
        self._answering = True  # False after a timeout: images no longer wait until an answer comes again
        self._seen = False  # an answer came during this call
        self._lag = 0  # the service's lookahead, once an answer said it

    def __call__(self, image: Any, metadata: dict) -> tuple[np.ndarray, dict]:
        img = np.asarray(image)
        if img.ndim != 2:
            raise ValueError(f"pycro-manager images are 2-D (height, width), got shape {img.shape}")
        seq = self._pub.next_seq
        if self._lag:  # a lookahead model never answers an image in time: do not even send it
            return self._raw(img, metadata, seq, self._lag_reason())
        t0 = time.monotonic()
        try:
            self._pub.send(img[None])
        except (ValueError, TypeError) as e:  # e.g. a new image size mid-acquisition: the raw image goes on
            return self._raw(img, metadata, seq, f"not sent: {e}")
        # Once the service has stopped answering, an image waits for nothing: acquisition would
        # otherwise crawl at one image per timeout. Any answer (a late one too) resumes waiting.
        wait = self.timeout_s if self._answering else 0.0
        self._seen = False
        try:
            out, header = self._wait(seq, t0 + wait)
        except TimeoutError as e:
            # waiting stops after a full timeout; it resumes once answers come again (a late one included)
            self._answering = wait == 0.0 and self._seen
            why = str(e) if wait else f"{e} (not waited for: the service stopped answering in time)"
            return self._raw(img, metadata, seq, why)
        self._answering = True
        metadata["rtdenoise"] = {"denoised": True, "seq": seq, "model": header.get("model"),
                                 "latency_ms": round((time.monotonic() - t0) * 1e3, 3)}
        self.counts["denoised"] += 1
        return _as_dtype(out, img.dtype), metadata

    def _wait(self, seq: int, deadline: float) -> tuple[np.ndarray, dict]:
        """The denoised frame ``seq``; older outputs (late ones, after a timeout) are skipped."""
        while True:
            try:
                h, frames = self._sub.recv(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise TimeoutError(f"no denoised image within {self.timeout_s} s (is `rtdenoise serve` running "
                                   f"with an imaging model, its input at {self._pub.address}, output at "
                                   f"{self._sub.address}?)") from None
            if h.get("lag"):
                self._lag = int(h["lag"])
                raise TimeoutError(self._lag_reason())
            self._seen = True  # the service answers (late, perhaps)
            if h["seq"] <= seq < h["seq"] + h["n"]:
                return np.array(frames[seq - h["seq"]]), h
            if h["seq"] > seq:  # the acquisition restarted numbering under us: nothing to wait for
                raise TimeoutError(f"outputs went past image {seq} (seq {h['seq']}) without it")

    def _lag_reason(self) -> str:
        return (f"the service runs a lookahead model (lag {self._lag}): an image's denoised version comes only "
                "after later images; serve a lag-0 model (imaging-lag0)")

    def _raw(self, img: np.ndarray, metadata: dict, seq: int, why: str) -> tuple[np.ndarray, dict]:
        metadata["rtdenoise"] = {"denoised": False, "seq": seq, "reason": why}
        self.counts["raw"] += 1
        return img, metadata

    def close(self) -> None:
        self._pub.close()
        self._sub.close()

    def __enter__(self) -> DenoiseProcessor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def denoise_processor(sub: str = "tcp://127.0.0.1:5555", pub: str = "tcp://127.0.0.1:5556", **kw) -> DenoiseProcessor:
    """An ``image_process_fn`` for ``pycromanager.Acquisition`` (see :class:`DenoiseProcessor`)."""
    return DenoiseProcessor(sub, pub, **kw)


def _as_dtype(frame: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The denoised float32 frame in the camera's dtype: integers rounded and clipped to its range."""
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(frame), info.min, info.max).astype(dtype)
    return frame.astype(dtype, copy=False)
