"""Replay a recording as if it were being acquired: frames published at their frame rate.

Pacing is open loop on absolute times: chunk ``i`` starting at frame ``f`` is due at
``t0 + f / rate_hz`` and is sent then (sleeping until it), never "period after the last
send", so timing errors do not accumulate. A chunk found already overdue is sent at once
and counted as ``late``. Each chunk's ``t_ns`` is its intended send time on the wall clock
(``time.time_ns()`` at the start plus the offset), as an instrument would stamp it.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np

from rtdenoise.stream import wire
from rtdenoise.stream.client import Publisher

__all__ = ["replay"]

_LATE_S = 1e-3  # a send more than this past its due time counts as late


def _frames_for_wire(frames: np.ndarray, name: str) -> np.ndarray:
    """Frames (T, *shape) in a dtype the wire carries: other numbers become ``<f8`` (exact to 2**53).

    Refused before anything is sent, as ``denoise`` refuses them: what a service would reject
    (colour, NaN or inf, no frames) or no model takes (frames of more than 2 dimensions).
    """
    from rtdenoise.io import validate_frames

    a = np.asarray(frames)
    if a.dtype == bool:
        raise TypeError(f"{name}: frames must be integer or float counts, got dtype {a.dtype}")
    validate_frames(a, name=name)
    if a.ndim > 3:
        raise ValueError(f"{name}: expected frames (T, W) or (T, H, W), time first; got shape {a.shape}")
    return a if a.dtype.str in wire.DTYPES else a.astype("<f8")


def replay(source: Any, *, pub: str, stream: str = "replay", rate_hz: float, chunk: int = 1,
           loop: bool = False, bind: bool = True, start_seq: int = 0, duration: float | None = None,
           key: str | None = None, wait_s: float = 0.5, meta: dict | None = None,
           stop: threading.Event | None = None, context=None, curve_keys=None) -> dict:
    """Publish a recording on ``frames/<stream>`` paced at ``rate_hz`` frames per second.

    Parameters
    ----------
    source : path or array (T, W)
        Any file :func:`rtdenoise.io.load_frames` reads, or the frames themselves (time
        first). Dtypes the wire does not carry (e.g. int64) are sent as ``<f8``.
    pub : str
        ZeroMQ endpoint, e.g. ``"tcp://127.0.0.1:5555"``.
    stream : str
        Stream name.
    rate_hz : float
        Frames per second (also sent as the header's ``fs``).
    chunk : int
        Frames per message; a chunk leaves when its first frame is due.
    loop : bool
        Start over at the end, ``seq`` counting on (the stream never restarts).
    bind : bool
        Bind ``pub`` (default, like an acquisition PC; the service's input connects by
        default) or connect to a service started with ``--bind-sub``.
    start_seq : int
        ``seq`` of the first frame.
    duration : float, optional
        Stop once this many seconds of frames were sent (needed with ``loop`` unless
        stopped otherwise).
    key : str, optional
        Array name inside a container file.
    wait_s : float
        Seconds to wait after binding/connecting before the first frame, so subscribers
        can join (PUB drops messages until they have).
    meta : dict, optional
        Passed through in every header.
    stop : threading.Event, optional
        Set it to stop early. Ctrl-C also stops early; the stats say ``interrupted``.
    curve_keys : (str, str), optional
        ``(client_secret_key_file, server_public_key_file)`` for a service run with CURVE.

    Returns
    -------
    dict
        ``frames``, ``messages``, ``first_seq``, ``next_seq``, ``seconds`` (first
        frame due to last send), ``achieved_hz``, ``late`` (sends more than 1 ms past due),
        ``max_late_ms``, ``loops``, ``interrupted``, ``address``, ``stream``.

    Examples
    --------
    >>> import numpy as np
    >>> s = replay(np.zeros((20, 152), "<u2"), pub="tcp://127.0.0.1:*", rate_hz=200, wait_s=0)
    >>> s["frames"], s["seconds"] >= 19 / 200
    (20, True)
    """
    if not (isinstance(rate_hz, (int, float)) and np.isfinite(rate_hz) and rate_hz > 0):
        raise ValueError(f"rate_hz must be a finite frame rate > 0, got {rate_hz!r}")
    if not isinstance(chunk, int) or isinstance(chunk, bool) or chunk < 1:
        raise ValueError(f"chunk must be an int >= 1 frame, got {chunk!r}")
    if not isinstance(start_seq, int) or start_seq < 0:
        raise ValueError(f"start_seq must be an int >= 0, got {start_seq!r}")
    if duration is not None and not duration > 0:
        raise ValueError(f"duration must be > 0 seconds, got {duration!r}")
    if isinstance(source, (str, os.PathLike)):
        from rtdenoise.io import load_frames

        frames = _frames_for_wire(load_frames(source, key=key), str(source))
    else:
        frames = _frames_for_wire(source, "frames")
    total = frames.shape[0]
    sent = messages = late = loops = 0
    max_late = 0.0
    interrupted = False
    t0 = t_last = None
    # linger: let the last messages leave after the loop; bounded so close never hangs.
    with Publisher(pub, stream=stream, bind=bind, fs=float(rate_hz), shape=frames.shape[1:],
                   context=context, linger=1000, curve_keys=curve_keys) as p:
        address = p.address
        if wait_s > 0:
            time.sleep(wait_s)
        t0, t0_ns = time.perf_counter(), time.time_ns()
        pos = 0
        try:
            while stop is None or not stop.is_set():
                offset = sent / rate_hz  # due time of this chunk's first frame, s after t0
                if duration is not None and offset >= duration:
                    break
                if pos >= total:
                    if not loop:
                        break
                    pos, loops = 0, loops + 1
                behind = time.perf_counter() - (t0 + offset)
                if behind < 0:
                    time.sleep(-behind)
                elif behind > _LATE_S:
                    late += 1
                    max_late = max(max_late, behind)
                piece = frames[pos:pos + chunk]
                p.send(piece, seq=start_seq + sent, t_ns=t0_ns + round(offset * 1e9), meta=meta, copy=True)
                t_last = time.perf_counter()
                pos += piece.shape[0]
                sent += piece.shape[0]
                messages += 1
        except KeyboardInterrupt:
            interrupted = True
    seconds = 0.0 if t_last is None else t_last - t0  # schedule start (first frame due) to last send
    return {
        "stream": stream, "address": address, "frames": sent, "messages": messages,
        "first_seq": start_seq, "next_seq": start_seq + sent, "rate_hz": float(rate_hz),
        "seconds": round(seconds, 6),
        "achieved_hz": round((sent - (piece.shape[0] if messages else 0)) / seconds, 3) if seconds > 0 else None,
        "late": late, "max_late_ms": round(max_late * 1e3, 3), "loops": loops, "interrupted": interrupted,
    }
