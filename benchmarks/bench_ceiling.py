"""Where the subspace model's error comes from: ceilings of the causal front end.

    python benchmarks/bench_ceiling.py   # writes benchmarks/results/ceiling.md

On the quality benchmark's recordings, with the front end run on the noisy frames:

- ``oracle``: the *clean* signal projected onto the running subspace — the best any
  network on these coefficients could do (what the subspace misses of the signal);
- ``top-k``: the noisy frames projected onto the first k tracked directions, no network;
- for a covariance horizon of 300 and 1000 frames.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_quality import machine, recordings  # noqa: E402

from rtdenoise import metrics  # noqa: E402
from rtdenoise.model.config import ModelConfig  # noqa: E402


def main() -> int:
    recs = recordings()
    rows = []
    for rname, rec in recs.items():
        ref = rec["clean"] + rec["static"]
        for horizon in (300, 1000):
            fe = ModelConfig(rank=8, cov_horizon=horizon).frontend(1)
            norm = fe.normalize(rec["noisy"][None])
            oracle = fe.to_counts(fe.target(ref[None], norm), norm)[0]
            cells = [f"{metrics.snr_db(oracle, ref):.2f}"]
            for k in (2, 3):
                z = norm.features[..., :8].copy()
                z[..., k:] = 0
                cells.append(f"{metrics.snr_db(fe.to_counts(z, norm)[0], ref):.2f}")
            rows.append(f"| {rname} | {horizon} | " + " | ".join(cells) + " |")
    md = "\n".join([
        "# Ceilings of the causal subspace front end (rank 8)",
        "",
        f"Machine: {machine()}. Date: {time.strftime('%Y-%m-%d')}. Command: `python benchmarks/bench_ceiling.py`",
        "",
        "SNR dB. `oracle`: clean signal projected on the running subspace (no network can beat it);",
        "`top-k`: noisy frames projected on the first k directions (no network).",
        "",
        "| recording | cov horizon | oracle | top-2 | top-3 |",
        "|---|---|---|---|---|",
        *rows,
    ]) + "\n"
    out = Path(__file__).parent / "results" / "ceiling.md"
    out.write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
