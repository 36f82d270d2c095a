"""Ship a fine-tuned model with the whole training chain of the one it started from.

    python benchmarks/chain_provenance.py SHIPPED.pt NEW.pt OUT.pt "the command of this run" [--machine TEXT]

``NEW`` was fine-tuned from ``SHIPPED`` (``rtdenoise train NEW --init SHIPPED ...``); its provenance
describes that run alone. ``OUT`` gets NEW's weights and config under SHIPPED's name, with provenance
that adds up the chain (what the model cards read, ``model_cards.py``):

- ``steps``, ``instances``, ``wall_time_s``: the chain's totals;
- ``command``: SHIPPED's command, then ``; then`` and this run's;
- ``fine_tune``: this run (steps, instances, wall time, init record, settled share);
  ``earlier_fine_tunes``: SHIPPED's own ``fine_tune`` records, oldest first;
- ``first_signal``: the signal model of the chain's first run (``signal`` is this run's);
- the rest (``train``, ``final_val_loss``, ``history``, ``date`` ...) is this run's;
- ``--machine``: what the chain ran on, when this run's machine alone would mislead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from rtdenoise.model.checkpoint import load  # noqa: E402


def chain(shipped, new, what: str, machine: str | None = None):
    po, pn = shipped.provenance, dict(new.provenance)
    if (pn.get("init") or {}).get("name") != shipped.name:
        raise ValueError(f"{new.name!r} was not fine-tuned from {shipped.name!r} (its init: {pn.get('init')})")
    earlier = list(po.get("earlier_fine_tunes", [])) + ([po["fine_tune"]] if "fine_tune" in po else [])
    run = {"steps": pn["steps"], "instances": pn["instances"], "wall_time_s": pn["wall_time_s"], "init": pn.pop("init"),
           "settled": pn["train"].get("settled", 0.0)}
    pn.update(steps=po["steps"] + run["steps"], instances=po["instances"] + run["instances"],
              wall_time_s=po["wall_time_s"] + run["wall_time_s"], fine_tune=run, earlier_fine_tunes=earlier,
              command=po["command"] + "; then " + what, first_signal=po.get("first_signal", po["signal"]))
    if machine:
        pn["machine"] = machine
    new.provenance, new.name = pn, shipped.name
    return new


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("shipped")
    ap.add_argument("new")
    ap.add_argument("out")
    ap.add_argument("what", help="this run's command, as the card shows it")
    ap.add_argument("--machine", default=None)
    args = ap.parse_args(argv)
    ck = chain(load(args.shipped), load(args.new), args.what, args.machine)
    ck.save(args.out)
    print(ck.name, ck.provenance["steps"], ck.provenance["final_val_loss"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
