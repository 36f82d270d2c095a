"""Soak with faults: `rtdenoise serve` under a steady 1 kHz stream for minutes, memory sampled.

    python benchmarks/bench_soak.py                       # 10 minutes at 1 kHz
    python benchmarks/bench_soak.py --minutes 3 --out /tmp/soak   # shorter, elsewhere

The service runs as its own process (``rtdenoise serve``, a tiny random model by
default: the subject is the service's machinery, not the network) and is measured from
this one. While a 1 kHz stream flows, faults are injected on a schedule and every frame
is accounted for:

- ``soak``: 1 frame per message at ``--rate``; read by a fast consumer and by a **slow
  consumer** (receive high-water mark 20, stalls a few seconds at a time): what it
  missed must be visible to it from ``seq``;
- ``steady`` (50 Hz): **frames lost upstream** (the publisher skips ``seq`` numbers) and
  **acquisition restarts** (``seq`` back to 0);
- ``burst``: now and then 40 messages of 100 frames at once, beyond the service's
  ``--max-queue 200``: **overflow**, the oldest dropped;
- an **intruder** socket sends a malformed message every 0.25 s, cycling through
  :func:`malformed_catalog` (every kind of broken message, and parts over the size limit
  that make libzmq drop the connection).

For each fault the report sets the frames really lost (known to the injector, or
measured by the fast consumer) against the frames counted as lost (service status,
output headers' ``gap``, the consumer's own ``seq`` arithmetic); they must be equal.
Memory: the service's RSS (``/proc/<pid>/status`` VmRSS) every second; growth is
measured from the end of the warm-up (the first ``--warmup`` seconds) to the end.

Writes ``benchmarks/results/soak.{json,md}`` (or ``--out``). ``tests/test_reliability.py``
runs :func:`soak` for 15 s against its own service process.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import zmq

from rtdenoise.stream import Subscriber, control, wire

sys.path.insert(0, str(Path(__file__).parent))
from bench_quality import machine  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SRC = Path(__file__).resolve().parents[1] / "src"
W = 152  # spectral bins of the models here


# ----------------------------------------------------------------------------- the service process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int) -> int:
    """Resident set size of a process, kB (VmRSS in /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def tiny_model(path: str | os.PathLike, seed: int = 0) -> Path:
    """Write a small random spectral model (depth 3, width 8, lag 0) to ``path``."""
    import torch

    from rtdenoise.model.checkpoint import Checkpoint
    from rtdenoise.model.config import ModelConfig

    cfg = ModelConfig(arch="spectral", lag=0, depth=3, width=8, dilations=[])
    torch.manual_seed(seed)
    net = cfg.build()
    Checkpoint("soak-tiny", cfg, net.state_dict(), wavelengths=np.linspace(500, 700, cfg.n_bins).tolist(),
               fs=5.0).save(path)
    return Path(path)


class ServeProcess:
    """``rtdenoise serve`` as a child process on fixed loopback ports (so it can be restarted there).

    Its stdout/stderr are drained by a thread (a full pipe would block the service's
    logging); the last lines are kept in ``.log``.
    """

    def __init__(self, model: str | os.PathLike, *, ports: dict | None = None, args: tuple = ()):
        self.model = str(model)
        self.ports = ports or {k: free_port() for k in ("sub", "pub")}
        # the same control endpoint across restarts; a killed service leaves a stale file the next bind replaces
        self.control = f"ipc://{tempfile.mkdtemp(prefix='rtd-soak-')}/control"
        self.args = tuple(args)
        self.proc: subprocess.Popen | None = None
        self.addresses: dict[str, str] = {}
        self.log: collections.deque[str] = collections.deque(maxlen=200)

    def start(self, timeout: float = 90.0) -> ServeProcess:
        env = {**os.environ, "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        cmd = [sys.executable, "-m", "rtdenoise.cli", "serve", "--model", self.model, "--bind-sub",
               "--sub", f"tcp://127.0.0.1:{self.ports['sub']}", "--pub", f"tcp://127.0.0.1:{self.ports['pub']}",
               "--control", self.control, "--threads", "1", *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        ready = threading.Event()

        def drain(proc=self.proc) -> None:
            for line in proc.stdout:
                self.log.append(line.rstrip())
                if "ready" in line and not ready.is_set():
                    self.addresses = dict(re.findall(r"(sub|pub|control)=(\S+)", line))
                    ready.set()

        threading.Thread(target=drain, daemon=True, name="serve-log").start()
        if not ready.wait(timeout):
            self.kill()
            raise RuntimeError("rtdenoise serve did not get ready:\n" + "\n".join(self.log))
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kb(self) -> int:
        return rss_kb(self.pid)

    def status(self, timeout: float = 5.0) -> dict:
        return control(self.addresses["control"], "status", timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: no cleanup, sockets vanish mid-stream (what a crash does)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int:
        """Ask it to stop (control ``stop``), kill it if it does not; its exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            try:
                control(self.addresses["control"], "stop", timeout=5)
                self.proc.wait(15)
            except (TimeoutError, subprocess.TimeoutExpired):
                self.kill()
        return self.proc.returncode


# ----------------------------------------------------------------------------- malformed messages


def malformed_catalog(max_header_bytes: int, max_payload_bytes: int) -> list[tuple[str, list, str]]:
    """Every kind of broken input message, as ``(kind, parts, what the service does)``.

    The last item is the reason the service counts in ``rejected_by_reason``, or
    ``"filtered"`` (never delivered: the topic does not match the service's
    subscription), or ``"disconnect"`` (a part over ``ZMQ_MAXMSGSIZE``: libzmq drops the
    connection; counted in ``connections.sub.disconnected``). Messages for stream
    ``intruder`` assume it already exists with frames ``(152,) <f4``.
    """
    x = np.full((1, W), 100.0, "<f4")
    good = [bytes(p) for p in wire.encode_frames("intruder", x, seq=0, t_ns=0)]
    topic, header, payload = good
    h = msgpack.unpackb(header)

    def with_header(**kv):
        d = {**h, **kv}
        return msgpack.packb({k: v for k, v in d.items() if v is not _DEL})

    nan = x.copy()
    nan[0, 3] = np.nan
    inf = x.copy()
    inf[0, 0] = -np.inf
    return [
        ("one_part", [topic], "parts"),
        ("two_parts", [topic, header], "parts"),
        ("four_parts", [topic, header, payload, b"extra"], "parts"),
        ("empty_header", [topic, b"", payload], "header_msgpack"),
        ("empty_payload", [topic, header, b""], "payload_size"),
        ("garbage_header", [topic, b"\xc1\xff\x00garbage", payload], "header_msgpack"),
        ("truncated_header", [topic, header[:-3], payload], "header_msgpack"),
        ("header_not_a_map", [topic, msgpack.packb([1, 2, 3]), payload], "header_type"),
        ("bytes_key", [topic, msgpack.packb({**h, b"k": 2}, use_bin_type=True), payload], "header_type"),
        ("int_key", [topic, msgpack.packb({**h, 1: 2}), payload], "header_msgpack"),  # msgpack's strict_map_key
        ("missing_key", [topic, with_header(t_ns=_DEL), payload], "header_missing"),
        ("extra_key", [topic, with_header(evil=1), payload], "header_extra"),
        ("output_key_on_input", [topic, with_header(gap=0), payload], "header_extra"),
        ("string_seq", [topic, with_header(seq="5"), payload], "header_value"),
        ("float_n", [topic, with_header(n=1.0), payload], "header_value"),
        ("negative_n", [topic, with_header(n=-1), payload], "header_value"),
        ("zero_n", [topic, with_header(n=0), payload], "header_value"),
        ("negative_seq", [topic, with_header(seq=-5), payload], "header_value"),
        ("huge_n", [topic, with_header(n=2**62), payload], "too_large"),
        ("unknown_version", [topic, with_header(v=2), payload], "version"),
        ("bad_dtype", [topic, with_header(dtype="<c8"), payload], "dtype"),
        ("zero_shape", [topic, with_header(shape=[0]), payload], "shape"),
        ("shape_dtype_mismatch", [topic, with_header(dtype="<f8"), payload], "payload_size"),
        ("topic_stream_mismatch", [b"frames/someone-else", header, payload], "topic"),
        ("oversized_header", [topic, with_header(meta={"pad": "x" * (max_header_bytes + 1)}), payload], "too_large"),
        ("nan_frames", wire.encode_frames("intruder", nan, seq=0, t_ns=0), "bad_frames"),
        ("inf_frames", wire.encode_frames("intruder", inf, seq=0, t_ns=0), "bad_frames"),
        ("shape_change", wire.encode_frames("intruder", np.ones((1, W - 2), "<f4"), seq=0, t_ns=0), "shape_change"),
        ("dtype_change", wire.encode_frames("intruder", x.astype("<f8"), seq=0, t_ns=0), "dtype_change"),
        ("not_the_model_shape", wire.encode_frames("odd", np.ones((1, 100), "<u2"), seq=0, t_ns=0), "frame_shape"),
        ("other_topic", [b"frams/intruder", header, payload], "filtered"),
        ("empty_topic", [b"", header, payload], "filtered"),
        ("oversized_part", [topic, header, b"\0" * (max(max_header_bytes, max_payload_bytes) + 1)], "disconnect"),
    ]


_DEL = object()


# ----------------------------------------------------------------------------- consumers


class _Track:
    """What one consumer saw of one stream."""

    def __init__(self, n_seq: int = 0):
        self.frames = self.messages = self.gap_sum = self.restarts = self.holes = 0
        self.expected: int | None = None
        self.first = self.last = None
        self.got = bytearray(n_seq)  # per seq, for the stream without restarts
        self.latency_ms: list[float] = []

    def add(self, h: dict, n: int, t_arr: int) -> None:
        seq = h["seq"]
        if self.expected is not None:
            if seq > self.expected:
                self.holes += seq - self.expected
            elif seq < self.expected:
                self.restarts += 1
        self.expected = seq + n
        self.frames += n
        self.messages += 1
        self.gap_sum += h["gap"]
        self.first = seq if self.first is None else self.first
        self.last = seq + n - 1
        if self.got and seq + n <= len(self.got):
            self.got[seq:seq + n] = b"\1" * n


def _consume(sub: Subscriber, tracks: dict, stop: threading.Event, slow=None) -> None:
    """Receive until ``stop``; ``slow() -> seconds`` is a pause after each message (a slow consumer)."""
    while not stop.is_set():
        try:
            h, f = sub.recv(timeout=0.1)
        except TimeoutError:
            continue
        t_arr = time.time_ns()
        tr = tracks.get(h["stream"])
        if tr is not None:
            tr.add(h, len(f), t_arr)
            if h["stream"] == "soak" and slow is None:
                tr.latency_ms.append((t_arr - h["t_ns"]) / 1e6)
        if slow is not None and (pause := slow()):
            time.sleep(pause)


# ----------------------------------------------------------------------------- the soak


def soak(addresses: dict, pid: int, *, seconds: float, rate: float = 1000.0, warmup_s: float = 5.0,
         gap_every_s: float = 5.0, gap_len: int = 7, restart_every_s: float = 11.0, burst_every_s: float = 7.0,
         bad_every_s: float = 0.25, slow_hz: float = 200.0, progress=None) -> dict:
    """Run the soak against a running service; return the report (see the module docstring).

    ``addresses``: the service's ``sub`` (it binds; we connect), ``pub`` and ``control``;
    ``pid``: its process, for RSS. The service should run with ``--max-queue 200``.
    """
    ctx = zmq.Context.instance()
    st0 = control(addresses["control"], "status", timeout=10)
    limits = (st0["max_header_bytes"], st0["max_payload_bytes"])
    n_soak = int(seconds * rate) + _TAIL + 10
    stop_consumers = threading.Event()
    fast = {s: _Track(n_soak if s == "soak" else 0) for s in ("soak", "steady", "burst", "probe")}
    slow = {"soak": _Track(n_soak)}

    def slow_pause() -> float:
        """The slow consumer takes 1/slow_hz per message while the load runs, then catches up."""
        return 0.0 if stop_pub_is_set[0] else 1.0 / slow_hz

    stop_pub_is_set = [False]
    fast_sub = Subscriber(addresses["pub"], rcvhwm=0)
    slow_sub = Subscriber(addresses["pub"], streams="soak", rcvhwm=20)
    threads = [threading.Thread(target=_consume, args=(fast_sub, fast, stop_consumers), daemon=True),
               threading.Thread(target=_consume, args=(slow_sub, slow, stop_consumers, slow_pause), daemon=True)]
    for t in threads:
        t.start()

    # Connections up (slow joiner): probe frames until one comes back to the fast consumer.
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.connect(addresses["sub"])
    x = np.full((1, W), 100.0, "<f4")
    deadline = time.monotonic() + 20
    k = 0
    while fast["probe"].frames == 0:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the service at {addresses} never answered")
        pub.send_multipart(wire.encode_frames("probe", x, seq=k, t_ns=time.time_ns()))
        k += 1
        time.sleep(0.02)
    # Frames to send: a recording-like spectrum with noise, regenerated cheaply per frame.
    rng = np.random.default_rng(0)
    base = (100.0 + 50.0 * np.sin(np.linspace(0, 3, W))).astype("<f4")
    noise = rng.normal(0, 3, (997, W)).astype("<f4")

    injected = collections.Counter()
    sent = collections.Counter()  # frames per stream
    lost_upstream = [0]
    bad_sent = collections.Counter()
    expected_reasons = collections.Counter()
    catalog = malformed_catalog(*limits)

    def publisher(t0: float) -> None:
        """soak at `rate` (1 frame/message); steady at 50 Hz with gaps and restarts."""
        i, steady_seq, next_gap, next_restart = 0, 0, gap_every_s, restart_every_s
        steady_every = max(1, round(rate / 50.0))
        t0_ns = time.time_ns() + round((t0 - time.monotonic()) * 1e9)  # t0 on the wall clock: t_ns = due time
        while True:
            off = i / rate
            if off >= seconds:
                break
            wait = t0 + off - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            frame = (base + noise[i % len(noise)])[None]
            pub.send_multipart(wire.encode_frames("soak", frame, seq=i, t_ns=t0_ns + round(off * 1e9), fs=rate))
            sent["soak"] += 1
            if i % steady_every == 0:
                if off >= next_restart:  # acquisition restarted (never in the same frame as a gap)
                    steady_seq = 0
                    injected["acquisition_restart"] += 1
                    next_restart += restart_every_s
                elif off >= next_gap:  # frames lost upstream: seq jumps
                    steady_seq += gap_len
                    lost_upstream[0] += gap_len
                    injected["upstream_gap"] += 1
                    next_gap += gap_every_s
                pub.send_multipart(wire.encode_frames("steady", frame, seq=steady_seq, t_ns=time.time_ns()))
                steady_seq += 1
                sent["steady"] += 1
            i += 1

    def burster(t0: float) -> None:
        sock = ctx.socket(zmq.PUB)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.connect(addresses["sub"])
        seq, nxt = 0, burst_every_s / 2
        chunk = np.repeat(base[None], 100, axis=0)
        while not stop_pub_is_set[0]:
            if time.monotonic() - t0 >= nxt:
                for _ in range(40):
                    sock.send_multipart(wire.encode_frames("burst", chunk, seq=seq, t_ns=time.time_ns()))
                    seq += 100
                sent["burst"] += 4000
                injected["burst_over_capacity"] += 1
                nxt += burst_every_s
            time.sleep(0.01)
        sock.close(linger=2000)

    def intruder(t0: float) -> None:
        sock = ctx.socket(zmq.PUB)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.connect(addresses["sub"])
        time.sleep(0.5)  # subscription arrives; the intruder stream exists before its faults
        sock.send_multipart(wire.encode_frames("intruder", x, seq=0, t_ns=0))
        j, nxt = 0, 1.0
        while not stop_pub_is_set[0]:
            if time.monotonic() - t0 < nxt:
                time.sleep(0.01)
                continue
            kind, parts, reason = catalog[j % len(catalog)]
            j += 1
            nxt += bad_every_s
            if reason == "disconnect":  # on a connection of its own: libzmq drops it
                one = ctx.socket(zmq.PUB)
                one.connect(addresses["sub"])
                time.sleep(0.2)
                one.send_multipart(parts)
                one.close(linger=2000)
            else:
                sock.send_multipart(parts)
            bad_sent[kind] += 1
            expected_reasons[reason] += 1
        sock.close(linger=2000)

    rss: list[tuple[float, int]] = []
    t0 = time.monotonic() + 0.1
    workers = [threading.Thread(target=publisher, args=(t0,), daemon=True),
               threading.Thread(target=burster, args=(t0,), daemon=True),
               threading.Thread(target=intruder, args=(t0,), daemon=True)]
    for w in workers:
        w.start()
    while workers[0].is_alive():
        rss.append((round(time.monotonic() - t0, 2), rss_kb(pid)))
        if progress is not None and len(rss) % 30 == 0:
            progress(f"{rss[-1][0]:.0f} s: RSS {rss[-1][1] / 1024:.1f} MiB, soak frames out {fast['soak'].frames}")
        workers[0].join(1.0)
    stop_pub_is_set[0] = True
    for w in workers[1:]:
        w.join(10)

    def drain() -> None:
        """Until nothing new arrives for 1.5 s (the slow consumer reads freely now)."""
        last, quiet_since = -1, time.monotonic()
        while time.monotonic() - quiet_since < 1.5:
            now = sum(t.frames for t in fast.values()) + slow["soak"].frames
            if now != last:
                last, quiet_since = now, time.monotonic()
            time.sleep(0.1)

    drain()
    # The stream goes on once the slow consumer has caught up, as a live one would: a consumer
    # learns of frames it missed from the seq of the next frame it gets.
    for j in range(_TAIL):
        i = sent["soak"]
        pub.send_multipart(wire.encode_frames("soak", (base + noise[i % len(noise)])[None], seq=i,
                                              t_ns=time.time_ns(), fs=rate))
        sent["soak"] += 1
        time.sleep(1.0 / rate)
    drain()
    pub.close(linger=2000)
    rss.append((round(time.monotonic() - t0, 2), rss_kb(pid)))
    stop_consumers.set()
    for t in threads:
        t.join(5)
    fast_sub.close()
    slow_sub.close()
    st = control(addresses["control"], "status", timeout=10)
    return _report(st0, st, rss, warmup_s, seconds, rate, fast, slow, sent, injected, lost_upstream[0],
                   bad_sent, expected_reasons, slow_hz)


def _delta(a: dict, b: dict) -> dict:
    return {k: b.get(k, 0) - a.get(k, 0) for k in set(a) | set(b) if b.get(k, 0) - a.get(k, 0)}


_TAIL = 20  # soak frames sent after the load, once the slow consumer has caught up
# Input connections this soak closes before its final status: the soak, burst and intruder publishers.
_CLOSED_PUBLISHERS = 3


def _report(st0, st, rss, warmup_s, seconds, rate, fast, slow, sent, injected, lost_upstream, bad_sent,
            expected_reasons, slow_hz) -> dict:
    s = st["streams"]
    steady, burst, soak_ = s.get("steady", {}), s.get("burst", {}), s.get("soak", {})
    f_soak, s_soak = fast["soak"], slow["soak"]
    # The slow consumer, over the span it saw: what it missed (the fast one got those) and
    # what seq told it it missed.
    lo, hi = s_soak.first or 0, s_soak.last or -1
    span = bytes(f_soak.got[lo:hi + 1])
    missed_true = span.count(1) - s_soak.frames
    missed_by_seq = s_soak.holes - s_soak.gap_sum  # seq holes, less what the service flagged as lost before it
    base = [kb for t, kb in rss if t >= warmup_s] or [rss[-1][1]]
    rss0, rss_end, rss_max = base[0], rss[-1][1], max(kb for _, kb in rss)
    rej = _delta(st0["rejected_by_reason"], st["rejected_by_reason"])
    want = {k: v for k, v in expected_reasons.items() if k not in ("filtered", "disconnect")}
    conn0, conn = st0["connections"].get("sub", {}), st["connections"].get("sub", {})
    lat = np.asarray(f_soak.latency_ms) if f_soak.latency_ms else np.asarray([np.nan])
    faults = {
        "upstream_gap": {
            "injected": injected["upstream_gap"], "frames_lost": lost_upstream,
            "counted_status_frames_missing": steady.get("frames_missing"),
            "counted_output_headers_gap": fast["steady"].gap_sum,
            "seen_by_consumer_seq_holes": fast["steady"].holes,
        },
        "acquisition_restart": {
            "injected": injected["acquisition_restart"], "frames_lost": 0,
            "counted_status_restarts": steady.get("restarts"),
            "seen_by_consumer_seq_back": fast["steady"].restarts,
            "frames_out_equals_in": steady.get("frames_out") == steady.get("frames_in") == sent["steady"],
        },
        "burst_over_capacity": {
            "injected": injected["burst_over_capacity"], "frames_sent": sent["burst"],
            "frames_lost": sent["burst"] - fast["burst"].frames,
            "counted_status_dropped": burst.get("dropped"),
            "counted_output_headers_gap": fast["burst"].gap_sum,
        },
        "slow_consumer": {
            "reads_per_s": slow_hz, "frames_published": soak_.get("frames_out"),
            "frames_received_fast": f_soak.frames, "frames_received_slow": s_soak.frames,
            "frames_lost": missed_true, "counted_from_seq": missed_by_seq,
        },
        "malformed": {
            "sent_by_kind": dict(bad_sent), "expected_by_reason": want,
            "counted_status_rejected_by_reason": rej,
            "oversized_parts": expected_reasons.get("disconnect", 0),
            "publishers_closed": _CLOSED_PUBLISHERS,
            "counted_connections_sub_disconnected": conn.get("disconnected", 0) - conn0.get("disconnected", 0),
            "filtered_never_delivered": expected_reasons.get("filtered", 0),
        },
    }
    checks = {
        "upstream_gap": lost_upstream == steady.get("frames_missing") == fast["steady"].gap_sum
        == fast["steady"].holes,
        "acquisition_restart": injected["acquisition_restart"] == steady.get("restarts") == fast["steady"].restarts,
        "burst_over_capacity": sent["burst"] - fast["burst"].frames == burst.get("dropped") == fast["burst"].gap_sum
        and burst.get("dropped", 0) > 0,
        "slow_consumer": missed_true == missed_by_seq and missed_true > 0,
        "malformed_by_reason": rej == want,
        "oversized_parts": faults["malformed"]["counted_connections_sub_disconnected"]
        == faults["malformed"]["oversized_parts"] + _CLOSED_PUBLISHERS,
        "soak_stream_complete": f_soak.frames + soak_.get("dropped", 0) == sent["soak"] == soak_.get("frames_in"),
        "service_running": bool(st.get("running")),
    }
    return {
        "seconds": seconds, "rate_hz": rate, "frames_sent": dict(sent), "faults": faults, "checks": checks,
        "all_equal": all(checks.values()),
        "memory": {
            "warmup_s": warmup_s, "rss_kb_after_warmup": rss0, "rss_kb_end": rss_end, "rss_kb_max": rss_max,
            "growth_pct": round(100.0 * (rss_end - rss0) / rss0, 3), "samples": rss,
        },
        "soak_latency_ms": {k: round(float(np.nanpercentile(lat, q)), 3) for k, q in
                            (("p50", 50), ("p99", 99), ("p999", 99.9), ("max", 100))},
        "service_status": {k: st[k] for k in ("messages_in", "rejected", "rejected_by_reason", "connections",
                                              "uptime_s", "max_queue")},
        "streams": {k: {kk: v[kk] for kk in ("frames_in", "frames_out", "gaps", "frames_missing", "restarts",
                                             "dropped", "discarded", "rejected")} for k, v in s.items()},
    }


# ----------------------------------------------------------------------------- report


def markdown(r: dict) -> str:
    f, m = r["faults"], r["memory"]
    lines = [
        f"# Soak: {r['seconds'] / 60:g} min at {r['rate_hz']:g} Hz with faults",
        "",
        f"Command: `{r['command']}`  ",
        f"Machine: {r['machine']} (shared with other work while it ran; load {r.get('load', '?')})  ",
        f"Date: {r['date']}. Model: {r['model']}. Checks all equal: **{r['all_equal']}**.",
        "",
        "## Memory (service process RSS)",
        "",
        "| after warm-up (%g s) | end | max | growth |" % m["warmup_s"],
        "|---:|---:|---:|---:|",
        f"| {m['rss_kb_after_warmup'] / 1024:.1f} MiB | {m['rss_kb_end'] / 1024:.1f} MiB | "
        f"{m['rss_kb_max'] / 1024:.1f} MiB | {m['growth_pct']:+.2f} % |",
        "",
        "## Frames lost vs frames counted as lost",
        "",
        "| fault | injected | frames lost | counted as lost | equal |",
        "|---|---:|---:|---|:-:|",
        f"| upstream gap (`steady`, seq skips {f['upstream_gap']['frames_lost'] // max(1, f['upstream_gap']['injected'])}) "
        f"| {f['upstream_gap']['injected']} | {f['upstream_gap']['frames_lost']} | status frames_missing "
        f"{f['upstream_gap']['counted_status_frames_missing']}, headers' gap {f['upstream_gap']['counted_output_headers_gap']}, "
        f"consumer's seq holes {f['upstream_gap']['seen_by_consumer_seq_holes']} | {r['checks']['upstream_gap']} |",
        f"| acquisition restart (`steady`, seq → 0) | {f['acquisition_restart']['injected']} | 0 | status restarts "
        f"{f['acquisition_restart']['counted_status_restarts']}, consumer saw seq go back "
        f"{f['acquisition_restart']['seen_by_consumer_seq_back']} times | {r['checks']['acquisition_restart']} |",
        f"| burst over capacity (`burst`, 40×100 frames, max_queue {r['service_status']['max_queue']}) | "
        f"{f['burst_over_capacity']['injected']} | {f['burst_over_capacity']['frames_lost']} of "
        f"{f['burst_over_capacity']['frames_sent']} | status dropped {f['burst_over_capacity']['counted_status_dropped']}, "
        f"headers' gap {f['burst_over_capacity']['counted_output_headers_gap']} | {r['checks']['burst_over_capacity']} |",
        f"| slow consumer (`soak`, RCVHWM 20, reads {f['slow_consumer']['reads_per_s']:g} msg/s) | 1 | "
        f"{f['slow_consumer']['frames_lost']} (of {f['slow_consumer']['frames_received_fast']} the fast consumer got) | "
        f"from its own seq: {f['slow_consumer']['counted_from_seq']} | {r['checks']['slow_consumer']} |",
        f"| parts over ZMQ_MAXMSGSIZE | {f['malformed']['oversized_parts']} | {f['malformed']['oversized_parts']} "
        f"messages | connections.sub.disconnected {f['malformed']['counted_connections_sub_disconnected']} "
        f"(= {f['malformed']['oversized_parts']} + {f['malformed']['publishers_closed']} publishers that closed) | "
        f"{r['checks']['oversized_parts']} |",
        "",
        f"The `soak` stream itself: {r['frames_sent'].get('soak', 0)} frames sent, all accounted "
        f"({r['checks']['soak_stream_complete']}); end-to-end latency from the frame's due time: "
        + ", ".join(f"{k} {v} ms" for k, v in r["soak_latency_ms"].items()) + ".",
        "",
        "## Malformed messages by kind",
        "",
        "| kind | sent |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {v} |" for k, v in sorted(f["malformed"]["sent_by_kind"].items())]
    lines += [
        "",
        "| reason | expected | counted in status |",
        "|---|---:|---:|",
    ]
    got = f["malformed"]["counted_status_rejected_by_reason"]
    for k in sorted(set(f["malformed"]["expected_by_reason"]) | set(got)):
        lines.append(f"| {k} | {f['malformed']['expected_by_reason'].get(k, 0)} | {got.get(k, 0)} |")
    lines += ["", f"Never delivered (topic outside the subscription): {f['malformed']['filtered_never_delivered']}.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=1000.0, help="frames/s of the soak stream")
    ap.add_argument("--warmup", type=float, default=30.0, help="seconds before the RSS baseline")
    ap.add_argument("--model", default=None, help="checkpoint to serve (default: a tiny random model)")
    ap.add_argument("--out", default=str(RESULTS / "soak"), help="writes OUT.json and OUT.md")
    args = ap.parse_args(argv)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or tiny_model(Path(tmp) / "soak-tiny.pt")
        svc = ServeProcess(model, args=("--max-queue", "200")).start()
        try:
            r = soak(svc.addresses, svc.pid, seconds=args.minutes * 60, rate=args.rate, warmup_s=args.warmup,
                     progress=lambda s: print(s, flush=True))
        finally:
            code = svc.stop()
    r.update(command=" ".join(["python benchmarks/bench_soak.py", *(argv if argv is not None else sys.argv[1:])]),
             machine=machine(), date=time.strftime("%Y-%m-%d %H:%M"), model=args.model or "tiny random (depth 3, width 8)",
             load=" ".join(f"{x:.2f}" for x in os.getloadavg()), service_exit_code=code)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(r, indent=1))
    out.with_suffix(".md").write_text(markdown(r))
    print(markdown(r))
    return 0 if r["all_equal"] and r["memory"]["growth_pct"] < 5.0 else 1


if __name__ == "__main__":
    sys.exit(main())
