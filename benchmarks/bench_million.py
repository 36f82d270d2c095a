"""A million mixed messages through `rtdenoise serve`: invariants and flat memory.

    python benchmarks/bench_million.py                          # 10**6 messages over 100 streams
    python benchmarks/bench_million.py --messages 50000 --out /tmp/m   # a short one

The service runs as its own process (``rtdenoise serve``, the tiny random model of
``bench_soak.py``: the subject is the service's machinery). One publisher sends, paced at
``--rate`` messages/s, a mix over ``--streams`` streams:

- **reference** streams (a tenth): valid 1-frame messages, contiguous; their outputs must
  equal offline :func:`rtdenoise.denoise.denoise` of the same frames;
- **mixed** streams: valid messages of 1-3 frames, and now and then an
  **extreme-but-legal** one at the stream's next seq: a finite value of 3e38 (refused,
  ``value_range``), ``fs=1e-300`` or ``t_ns`` near 2**64 (``time_range``), a ``meta`` of
  float32 values that outgrows the wire when re-encoded (``output_too_large``), values
  near ±2**32 (accepted: the output must stay finite), a 2,000-frame chunk (accepted:
  taken in pieces), a ``seq`` jump (a gap) or a restart at 0;
- and, on a socket of its own, every malformed message of ``bench_soak.malformed_catalog``
  in rotation (a part over the size limit on a connection of its own).

Every frame is sent with ``fs=5`` and ``t_ns = T0(stream) + seq * 0.2 s``, so a consumer
can check each output's label from its own clock. A consumer reads every output and checks:

1. **no non-finite value** in any output;
2. **no mislabelled output**: each output's ``t_ns`` is its ``seq``'s own time, and the
   reference streams equal offline;
3. **exact accounting**: per stream ``frames_in == frames_out + dropped + discarded +
   queue_depth + in_flight``; the consumer received exactly ``frames_out`` frames; every
   rejection is counted by the reason expected for what was sent;
4. **flat memory**: the service's RSS (``/proc``) after the warm-up (the first 20 % of the
   messages: by then each stream's latency windows, 1,000 messages, are full) stays within
   ±5 % of its value then.

Writes ``benchmarks/results/million.{json,md}`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import zmq

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from rtdenoise.stream import control, wire  # noqa: E402


def _bench_soak():
    spec = importlib.util.spec_from_file_location("bench_soak", HERE / "bench_soak.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


soak = _bench_soak()
W = soak.W
PERIOD_NS = 200_000_000  # fs = 5 Hz
FS = 5.0
POOL = 4096  # distinct valid frames, reused by seq


def t_of(stream_index: int, seq: int) -> int:
    return 10**15 + stream_index * 10**12 + seq * PERIOD_NS


#: Extreme-but-legal messages: (kind, reason the service counts, or None: accepted).
EXTREMES = [("huge_value", "value_range"), ("tiny_fs", "time_range"), ("t_ns_near_max", "time_range"),
            ("meta_grows", "output_too_large"), ("near_2_32", None), ("big_chunk", None), ("gap", None),
            ("restart", None)]


class Stream:
    def __init__(self, i: int, reference: bool):
        self.i, self.name, self.reference = i, (f"ref{i:03d}" if reference else f"mix{i:03d}"), reference
        self.seq = 0
        self.messages = 0
        self.sent_frames = 0
        self.injected = collections.Counter()  # gaps and restarts sent  # accepted by design (valid and accepted-extreme)

    def frames(self, pool: np.ndarray, seq: int, n: int) -> np.ndarray:
        return pool[(np.arange(seq, seq + n) + 7 * self.i) % POOL]


def extreme(kind: str, st: Stream, pool: np.ndarray) -> tuple[list, int, int]:
    """(parts, frames the stream takes, new next seq) for one extreme message at st.seq."""
    s, name = st.seq, st.name
    x = st.frames(pool, s, 1)
    if kind == "huge_value":
        y = x.copy()
        y[0, 5] = 3e38
        return wire.encode_frames(name, y, seq=s, t_ns=t_of(st.i, s), fs=FS), 0, s
    if kind == "tiny_fs":
        return wire.encode_frames(name, st.frames(pool, s, 2), seq=s, t_ns=t_of(st.i, s), fs=1e-300), 0, s
    if kind == "t_ns_near_max":
        return wire.encode_frames(name, st.frames(pool, s, 2), seq=s, t_ns=2**64 - 1, fs=FS), 0, s
    if kind == "meta_grows":
        h = msgpack.unpackb(bytes(wire.encode_frames(name, x, seq=s, t_ns=t_of(st.i, s), fs=FS)[1]))
        h["meta"] = {"v": [0.5] * 12_000}  # 60 kB as float32, 108 kB as the float64 it comes back as
        return [wire.topic_for(wire.FRAMES, name), msgpack.packb(h, use_single_float=True), x.tobytes()], 0, s
    if kind == "near_2_32":
        y = np.full((1, W), 4.0e9 if s % 2 else -4.0e9, "<f4")
        return wire.encode_frames(name, y, seq=s, t_ns=t_of(st.i, s), fs=FS), 1, s + 1
    if kind == "big_chunk":
        return wire.encode_frames(name, st.frames(pool, s, 2000), seq=s, t_ns=t_of(st.i, s), fs=FS), 2000, s + 2000
    if kind == "gap":
        s2 = s + 5
        return wire.encode_frames(name, st.frames(pool, s2, 1), seq=s2, t_ns=t_of(st.i, s2), fs=FS), 1, s2 + 1
    if kind == "restart":
        return wire.encode_frames(name, st.frames(pool, 0, 1), seq=0, t_ns=t_of(st.i, 0), fs=FS), 1, 1
    raise ValueError(kind)


class Consumer(threading.Thread):
    """Reads every output; checks finiteness and labels; keeps the reference streams' frames."""

    def __init__(self, ctx: zmq.Context, address: str, index: dict[str, int], refs: set[str]):
        super().__init__(daemon=True)
        self.sock = ctx.socket(zmq.SUB)
        self.sock.rcvhwm = 0
        self.sock.subscribe(wire.topic_for(wire.DENOISED))
        self.sock.connect(address)
        self.index, self.refs = index, refs
        self.frames = collections.Counter()
        self.messages = 0
        self.non_finite = 0
        self.mislabelled: list = []
        self.ref_out: dict[str, dict[int, np.ndarray]] = {r: {} for r in refs}
        self.last = time.monotonic()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if not self.sock.poll(50):
                continue
            while True:
                try:
                    parts = self.sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                _, h, f = wire.decode(parts, kind=wire.DENOISED)
                self.last = time.monotonic()
                name, n = h["stream"], h["n"]
                self.messages += 1
                self.frames[name] += n
                if not np.isfinite(f).all():
                    self.non_finite += 1
                i = self.index.get(name)
                if i is not None and h["t_ns"] != t_of(i, h["seq"]):
                    self.mislabelled.append((name, h["seq"], h["t_ns"]))
                if name in self.refs:
                    for k in range(n):
                        self.ref_out[name][h["seq"] + k] = np.array(f[k])


def run(addresses: dict, pid: int, *, messages: int, n_streams: int, rate: float, seed: int = 0,
        extreme_every: int = 20, bad_every: int = 20, progress=print) -> dict:
    rng = np.random.default_rng(seed)
    pool = rng.poisson(200.0, (POOL, W)).astype("<f4")
    streams = [Stream(i, reference=i % 10 == 0) for i in range(n_streams)]
    index = {s.name: s.i for s in streams}
    ctx = zmq.Context.instance()
    consumer = Consumer(ctx, addresses["pub"], index, {s.name for s in streams if s.reference})
    consumer.start()
    pub = ctx.socket(zmq.PUB)
    pub.sndhwm = 0
    pub.connect(addresses["sub"])
    bad = ctx.socket(zmq.PUB)
    bad.sndhwm = 0
    bad.connect(addresses["sub"])
    time.sleep(1.0)  # subscriptions have arrived
    x0 = np.full((1, W), 100.0, "<f4")
    bad.send_multipart(wire.encode_frames("intruder", x0, seq=0, t_ns=0))  # the stream the catalog assumes
    time.sleep(0.2)
    st0 = control(addresses["control"], "status", timeout=10)
    catalog = soak.malformed_catalog(st0["max_header_bytes"], st0["max_payload_bytes"])
    oversized = [c for c in catalog if c[2] == "disconnect"]
    catalog = [c for c in catalog if c[2] != "disconnect"]
    oversized_every = max(1, messages // 20)  # 20 of them: each costs a connection (and a 0.2 s wait here)

    expected = collections.Counter()
    sent_kinds = collections.Counter()
    rss: list[tuple[int, int]] = []
    t0 = time.monotonic()
    next_rss = t0
    j = 0  # messages of the streams so far
    for k in range(messages):
        due = t0 + k / rate
        now = time.monotonic()
        if due > now + 0.001:
            time.sleep(due - now)
        if now >= next_rss:
            rss.append((k, soak.rss_kb(pid)))
            next_rss = now + 1.0
            if len(rss) % 30 == 0:
                progress(f"{k} messages, {now - t0:.0f} s, service RSS {rss[-1][1] / 1024:.1f} MiB, "
                         f"outputs {consumer.messages}")
        if k % oversized_every == oversized_every // 2:  # libzmq drops the connection that carried it
            kind, parts, reason = oversized[0]
            one = ctx.socket(zmq.PUB)
            one.connect(addresses["sub"])
            time.sleep(0.2)
            one.send_multipart(parts)
            one.close(linger=2000)
            sent_kinds["malformed:" + kind] += 1
            expected[reason] += 1
            continue
        if k % bad_every == bad_every - 1:
            kind, parts, reason = catalog[(k // bad_every) % len(catalog)]
            sent_kinds["malformed:" + kind] += 1
            bad.send_multipart(parts)
            expected[reason] += 1
            continue
        st = streams[j % n_streams]
        j += 1
        st.messages += 1
        if not st.reference and st.messages % extreme_every == 0:
            kind, reason = EXTREMES[(st.messages // extreme_every + st.i) % len(EXTREMES)]
            if kind == "big_chunk" and rng.random() > 0.1:  # 2,000 frames each: a tenth of their turns
                kind, reason = "huge_value", "value_range"
            parts, taken, st.seq = extreme(kind, st, pool)
            pub.send_multipart(parts)
            st.sent_frames += taken
            st.injected[kind] += 1
            sent_kinds["extreme:" + kind] += 1
            if reason:
                expected[reason] += 1
            continue
        n = 1 if st.reference else 1 + st.messages % 3
        pub.send_multipart(wire.encode_frames(st.name, st.frames(pool, st.seq, n), seq=st.seq,
                                              t_ns=t_of(st.i, st.seq), fs=FS))
        st.seq += n
        st.sent_frames += n
        sent_kinds["valid"] += 1
    send_s = time.monotonic() - t0
    # drain: until the service has nothing queued and the consumer saw nothing new for 2 s
    while True:
        time.sleep(0.5)
        st = control(addresses["control"], "status", timeout=10)
        busy = any(s["queue_depth"] for s in st["streams"].values())
        if not busy and time.monotonic() - consumer.last > 2.0:
            break
    rss.append((messages, soak.rss_kb(pid)))
    consumer.stop.set()
    consumer.join(5)
    pub.close(linger=0)
    bad.close(linger=0)
    consumer.sock.close(linger=0)
    return _report(st0, st, streams, consumer, expected, sent_kinds, rss, messages, send_s, pool, addresses)


def _report(st0, st, streams, consumer, expected, sent_kinds, rss, messages, send_s, pool, addresses) -> dict:
    from rtdenoise.denoise import denoise

    got = collections.Counter(st["rejected_by_reason"])
    got.subtract(st0["rejected_by_reason"])
    got = +got
    identity_bad, consumer_bad, sent_bad, seq_bad = [], [], [], []
    for name, s in st["streams"].items():
        if s["frames_in"] != s["frames_out"] + s["dropped"] + s["discarded"] + s["queue_depth"] + s["in_flight"]:
            identity_bad.append(name)
        if name != "intruder" and consumer.frames[name] != s["frames_out"]:
            consumer_bad.append((name, consumer.frames[name], s["frames_out"]))
    for sobj in streams:
        s = st["streams"].get(sobj.name)
        if (s["frames_in"] if s else 0) != sobj.sent_frames:
            sent_bad.append((sobj.name, sobj.sent_frames, None if s is None else s["frames_in"]))
        if s and (s["gaps"], s["restarts"]) != (sobj.injected["gap"], sobj.injected["restart"]):
            seq_bad.append((sobj.name, sobj.injected["gap"], s["gaps"], sobj.injected["restart"], s["restarts"]))
    # the reference streams: equal to offline
    model = st["model"]
    ref_max_err, ref_bad = 0.0, []
    ckpt = addresses.get("model_path")
    for sobj in streams:
        if not sobj.reference:
            continue
        out = consumer.ref_out[sobj.name]
        if sorted(out) != list(range(sobj.seq)):
            ref_bad.append(sobj.name)
            continue
        ref = denoise(sobj.frames(pool, 0, sobj.seq), model=ckpt)
        y = np.stack([out[q] for q in range(sobj.seq)])
        err = float(np.max(np.abs(y - ref)) / np.max(np.abs(ref)))
        ref_max_err = max(ref_max_err, err)
        if err > 1e-4:
            ref_bad.append(sobj.name)
    warm = messages // 5  # by then every stream's latency windows (1,000 messages each) are full
    base = next((kb for k, kb in rss if k >= warm), rss[0][1])
    after = [kb for k, kb in rss if k >= warm]
    mem = {"baseline_kb": base, "min_kb": min(after), "max_kb": max(after), "end_kb": rss[-1][1],
           "max_dev_pct": round(100 * max(abs(kb - base) for kb in after) / base, 2)}
    expected_clean = {k: v for k, v in expected.items() if k not in ("filtered", "disconnect")}
    reasons_ok = all(got.get(k, 0) == v for k, v in expected_clean.items())
    checks = {
        "no_non_finite_output": consumer.non_finite == 0,
        "no_mislabelled_output": not consumer.mislabelled and not ref_bad,
        "accounting_identity_exact": not identity_bad and not consumer_bad and not sent_bad,
        "gaps_and_restarts_as_injected": not seq_bad,
        "rejections_by_expected_reason": reasons_ok,
        "memory_flat_5pct": mem["max_dev_pct"] <= 5.0,
    }
    return {
        "messages_sent": messages, "send_s": round(send_s, 1), "rate_achieved": round(messages / send_s, 1),
        "messages_in_service": st["messages_in"] - st0["messages_in"], "outputs_received": consumer.messages,
        "streams": len(streams), "model": model, "sent_by_kind": dict(sorted(sent_kinds.items())),
        "rejected_expected": dict(sorted(expected_clean.items())), "rejected_counted": dict(sorted(got.items())),
        "non_finite_outputs": consumer.non_finite, "mislabelled": consumer.mislabelled[:10],
        "reference_streams_max_rel_err": ref_max_err, "reference_bad": ref_bad,
        "identity_bad": identity_bad, "consumer_vs_status_bad": consumer_bad[:10], "sent_vs_frames_in_bad": sent_bad[:10],
        "gaps_restarts_bad": seq_bad[:10],
        "frames_out_total": sum(s["frames_out"] for s in st["streams"].values()),
        "resets_total": sum(s["resets"] for s in st["streams"].values()),
        "gaps_total": sum(s["gaps"] for s in st["streams"].values()),
        "restarts_total": sum(s["restarts"] for s in st["streams"].values()),
        "memory": mem, "rss_kb": rss, "checks": checks, "passed": all(checks.values()),
    }


def markdown(r: dict) -> str:
    m = r["memory"]
    lines = [
        "# A million mixed messages through `rtdenoise serve`",
        "",
        f"Machine: {r['machine']}. Date: {r['date']}. Command: `{r['command']}`",
        "",
        f"{r['messages_sent']} messages over {r['streams']} streams in {r['send_s']} s "
        f"({r['rate_achieved']} messages/s), model `{r['model']}` (tiny, random: the subject is the service).",
        f"The service counted {r['messages_in_service']} messages in (those over the size limit never reach it: "
        f"libzmq drops their connection); {r['outputs_received']} outputs received, {r['frames_out_total']} frames out.",
        "",
        "| check | result |",
        "|---|---|",
        *(f"| {k.replace('_', ' ')} | {'pass' if v else '**FAIL**'} |" for k, v in r["checks"].items()),
        "",
        f"Reference streams (valid only): largest error against offline {r['reference_streams_max_rel_err']:.2e} "
        "(relative to the output's peak).",
        f"Memory (service RSS): {m['baseline_kb'] / 1024:.1f} MiB after the warm-up, then "
        f"{m['min_kb'] / 1024:.1f}–{m['max_kb'] / 1024:.1f} MiB, {m['end_kb'] / 1024:.1f} MiB at the end "
        f"(largest deviation {m['max_dev_pct']} %).",
        f"Gaps {r['gaps_total']}, restarts {r['restarts_total']}, resets {r['resets_total']}.",
        "",
        "| sent | messages |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in r["sent_by_kind"].items()),
        "",
        "| reason | expected | counted |",
        "|---|---|---|",
        *(f"| {k} | {r['rejected_expected'].get(k, 0)} | {r['rejected_counted'].get(k, 0)} |"
          for k in sorted(set(r["rejected_expected"]) | set(r["rejected_counted"]))),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--rate", type=float, default=2000.0, help="messages/s sent (this 2-core machine keeps up with 2000; at 4000 it falls behind)")
    ap.add_argument("--out", default=str(RESULTS / "million"), help="writes OUT.json and OUT.md")
    ap.add_argument("--serve-args", default="", help="extra `rtdenoise serve` arguments, e.g. --spin")
    args = ap.parse_args(argv)
    from bench_quality import machine

    with tempfile.TemporaryDirectory() as tmp:
        model = soak.tiny_model(Path(tmp) / "million-tiny.pt")
        svc = soak.ServeProcess(model, args=("--max-streams", str(args.streams + 10), "--max-queue", "50000",
                                              "--max-payload-bytes", str(4 * 2**20), *args.serve_args.split())).start()
        try:
            r = run({**svc.addresses, "model_path": str(model)}, svc.pid, messages=args.messages,
                    n_streams=args.streams, rate=args.rate,
                    progress=lambda s: print(s, file=sys.stderr, flush=True))
        finally:
            code = svc.stop()
    r.update(machine=machine(), date=time.strftime("%Y-%m-%d %H:%M"), service_exit_code=code,
             command="python benchmarks/bench_million.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(r, indent=1))
    out.with_suffix(".md").write_text(markdown(r))
    print(markdown(r))
    return 0 if r["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
