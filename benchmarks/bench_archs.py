"""Architecture comparison on one training budget: DeepDenoise's 2-D CNN, the
spectrum-as-channels CNN and the causal-subspace model (the default).

    python benchmarks/bench_archs.py --minutes 10   # writes benchmarks/results/archs.{json,md}

Each architecture trains for the same wall-clock budget on this machine (all of them at
once, each with one process, so they share the CPU alike), lag 0, seed 0, then is scored
with the quality benchmark's held-out recordings.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_quality import machine, recordings  # noqa: E402

from rtdenoise import metrics  # noqa: E402
from rtdenoise.denoise import denoise  # noqa: E402
from rtdenoise.model.checkpoint import load  # noqa: E402
from rtdenoise.model.config import ModelConfig  # noqa: E402
from rtdenoise.train import TrainConfig, train  # noqa: E402

RESULTS = Path(__file__).parent / "results"

ARCHS = {
    # DeepDenoise's layout: 3×3 kernels over (time × wavelength); W times the work per frame,
    # so smaller windows and width to get a comparable number of steps.
    "2d": (ModelConfig(arch="2d", depth=8, width=32, dilations=[]), dict(window=64, batch=4)),
    "spectral": (ModelConfig(arch="spectral"), dict(window=256, batch=16)),
    "subspace": (ModelConfig(arch="subspace"), dict(window=256, batch=16)),
}


def _train(name: str, minutes: float, out: str) -> None:
    model, kw = ARCHS[name]
    train(out, model=model, config=TrainConfig(minutes=minutes, steps=10**6, workers=0, threads=1, val_every=100, **kw),
          name=f"arch-{name}", progress=False)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--workdir", default="/tmp/rtdenoise-archs")
    args = ap.parse_args(argv)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    paths = {n: str(Path(args.workdir) / f"{n}.pt") for n in ARCHS}
    procs = [mp.get_context("spawn").Process(target=_train, args=(n, args.minutes, p)) for n, p in paths.items()]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    recs = recordings()
    res = {"machine": machine(), "minutes": args.minutes, "date": time.strftime("%Y-%m-%d"),
           "command": "python benchmarks/bench_archs.py " + " ".join(argv or sys.argv[1:]), "archs": {}}
    for name, path in paths.items():
        ck = load(path)
        entry = {"steps": ck.provenance["steps"], "instances": ck.provenance["instances"],
                 "val_loss": ck.provenance["final_val_loss"], "identity_loss": ck.provenance["val_loss_raw"],
                 "config": ck.config.to_dict(), "snr_db": {}}
        for rname, rec in recs.items():
            ref = rec["clean"] + rec["static"]
            t0 = time.perf_counter()
            entry["snr_db"][rname] = metrics.snr_db(denoise(rec["noisy"], model=ck), ref)
            entry.setdefault("ms_per_frame", 1e3 * (time.perf_counter() - t0) / len(ref))
        res["archs"][name] = entry
    raw = {r: metrics.snr_db(rec["noisy"], rec["clean"] + rec["static"]) for r, rec in recs.items()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "archs.json").write_text(json.dumps(res, indent=2, default=float))
    cols = list(recs)
    md = [
        "# Architecture comparison on one training budget",
        "",
        f"Machine: {res['machine']}. Date: {res['date']}. Budget: {args.minutes:g} min each, all three at once.",
        f"Command: `{res['command']}`",
        "",
        "| arch | steps | instances | val loss / identity | " + " | ".join(f"SNR dB {c}" for c in cols) + " | ms/frame offline |",
        "|---|---|---|---|" + "---|" * len(cols) + "---|",
        "| raw | | | | " + " | ".join(f"{raw[c]:.2f}" for c in cols) + " | |",
    ]
    for name, e in res["archs"].items():
        md.append(f"| {name} | {e['steps']} | {e['instances']} | {e['val_loss']:.3f} / {e['identity_loss']:.3f} | "
                  + " | ".join(f"{e['snr_db'][c]:.2f}" for c in cols) + f" | {e['ms_per_frame']:.2f} |")
    (RESULTS / "archs.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
