"""``rtdenoise view``: watch a live stream in napari, denoised beside raw (``pip install 'rtdenoise[viewer]'``).

Subscribes to the service's output (``--sub``) and, when given, to the acquisition's raw
frames (``--raw``: the PUB the acquisition binds), and shows them side by side: images as
two image layers, spectra as scrolling spectrograms (time × wavelength, the newest row at
the bottom). The text overlay shows frames received, frames lost (``seq`` jumps and the
service's ``gap``), and the latency from each frame's acquisition time (``t_ns``, the
sender's clock) to the viewer. Frames arrive on a worker thread, which counts every one and
hands the newest to napari's (Qt's) main thread at most 30 times a second, as napari
requires: a slow display shows the newest frame, never a backlog.

``--frames N --screenshot PNG`` stops after N denoised frames and saves the canvas: how the
test runs it headless (under Xvfb).
"""

from __future__ import annotations

import collections
import time

import numpy as np

__all__ = ["run_viewer"]


def _napari():
    try:
        import napari
    except ImportError as e:
        raise ImportError(f"the viewer needs napari and a Qt binding: pip install 'rtdenoise[viewer]' ({e})") from e
    return napari


class _Stream:
    """What one layer shows and what the overlay counts for it."""

    def __init__(self, history: int):
        self.history = history
        self.rows: collections.deque | None = None  # spectra: the latest frames, for the spectrogram
        self.frames = self.lost = 0
        self.next_seq: int | None = None
        self.latency_ms: collections.deque = collections.deque(maxlen=200)

    def add(self, header: dict, frames: np.ndarray) -> np.ndarray:
        """Count a message; return what the layer shows now (the last image, or the spectrogram)."""
        seq, n = header["seq"], header["n"]
        if self.next_seq is not None and seq > self.next_seq:
            self.lost += seq - self.next_seq
        self.lost += int(header.get("gap", 0))
        self.next_seq = seq + n
        self.frames += n
        self.latency_ms.append((time.time_ns() - header["t_ns"]) / 1e6)
        if frames.ndim == 2:  # spectra (n, W): a scrolling spectrogram
            if self.rows is None or self.rows.maxlen != self.history:
                self.rows = collections.deque(maxlen=self.history)
            self.rows.extend(np.asarray(frames, dtype=np.float32))
            return np.stack(self.rows)
        return np.asarray(frames[-1], dtype=np.float32)


def run_viewer(sub: str, *, raw: str | None = None, stream: str | None = None, frames: int | None = None,
               screenshot: str | None = None, history: int = 300, timeout: float = 60.0, curve_keys=None) -> dict:
    """Open the viewer; return the counts when it closes (or after ``frames`` denoised frames)."""
    napari = _napari()
    from napari.qt.threading import thread_worker

    from rtdenoise.stream import Subscriber, wire

    viewer = napari.Viewer(title="rtdenoise view" + (f": {stream}" if stream else ""))
    viewer.text_overlay.visible = True
    viewer.text_overlay.text = f"waiting for frames from {sub}" + (f" (stream {stream!r})" if stream else "")
    streams = {"denoised": _Stream(history), "raw": _Stream(history)}
    layers: dict = {}
    done = {"stop": False, "t0": time.monotonic()}

    @thread_worker
    def receive():
        """Receive everything (counting it); hand the latest frames to the GUI at most
        every 1/30 s: a display that cannot keep up shows the newest frame, never a backlog."""
        import zmq

        socks = {"denoised": Subscriber(sub, streams=stream, drop_invalid=True, curve_keys=curve_keys)}
        if raw:
            socks["raw"] = Subscriber(raw, streams=stream, kind=wire.FRAMES, drop_invalid=True, curve_keys=curve_keys)
        poller = zmq.Poller()
        for s in socks.values():
            poller.register(s._socket, zmq.POLLIN)
        latest: dict = {}
        next_show = 0.0
        try:
            while not done["stop"]:
                ready = dict(poller.poll(10))
                for kind, s in socks.items():
                    while s._socket in ready:
                        try:
                            h, f = s.recv(timeout=0)
                        except TimeoutError:
                            break
                        latest[kind] = (h, streams[kind].add(h, np.array(f)))
                now = time.monotonic()
                if latest and now >= next_show:
                    yield dict(latest)
                    latest.clear()
                    next_show = now + 1 / 30
                if frames and now - done["t0"] > timeout:
                    yield {"timeout": None}
                    return
        finally:
            for s in socks.values():
                s.close()

    def show(update: dict) -> None:
        if "timeout" in update:
            done["stop"] = True
            viewer.close()
            return
        refit = False  # a new layer (the grid splits the canvas) or a spectrogram still growing
        for kind, (h, data) in update.items():
            if kind not in layers:
                layers[kind] = viewer.add_image(data, name=f"{kind} {h['stream']}", colormap="gray")
                viewer.grid.enabled = len(layers) == 2  # side by side
                refit = True
            else:
                refit |= layers[kind].data.shape != data.shape
                layers[kind].data = data
        if refit:  # else the canvas keeps the first frames' extent (and contrast) and crops what came since
            viewer.reset_view()
            for layer in layers.values():
                layer.reset_contrast_limits()
        d = streams["denoised"]
        lat = np.percentile(d.latency_ms, [50, 99]) if d.latency_ms else (np.nan, np.nan)
        viewer.text_overlay.text = (f"denoised {d.frames}, lost {d.lost}, raw {streams['raw'].frames}; "
                                    f"latency p50 {lat[0]:.1f}, p99 {lat[1]:.1f} ms")
        if frames and d.frames >= frames and not done["stop"]:
            done["stop"] = True
            if screenshot:
                # The canvas laid out first (its size, the grid of a panel added in this very
                # update), then fitted: a first update that already holds every frame would
                # otherwise be fitted to a canvas not yet sized, and shot zoomed into a corner.
                from qtpy.QtWidgets import QApplication

                QApplication.processEvents()
                viewer.reset_view()
                viewer.screenshot(screenshot, canvas_only=True, flash=False)
            viewer.close()

    worker = receive()
    worker.yielded.connect(show)
    worker.start()
    napari.run()
    done["stop"] = True
    d = streams["denoised"]
    return {"denoised": d.frames, "raw": streams["raw"].frames, "lost": d.lost,
            "latency_ms_p50": float(np.percentile(d.latency_ms, 50)) if d.latency_ms else None,
            "timed_out": bool(frames) and d.frames < frames}
