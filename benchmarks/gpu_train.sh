#!/usr/bin/env bash
# Training on a lent GPU, as one device call (about MINUTES + 1.5 minutes):
#
#   run(command="MINUTES=2.5 bash benchmarks/gpu_train.sh", carry=[".whl"], timeout_s=360)
#
# (step limits 60 + 90 + MINUTES·60 + 60 s; on an H100 the first two took 20 and 40 s before `scenes` and
# `finish` were added to the second)
#
# 1. the GPU-marked training test (a CUDA run follows the CPU's); 2. bench_train_gpu.py: the optimizer's
# pace on the card against the pace the CPU workers make instances at, and the split a GPU run uses (scenes on
# the workers, PMT noise and front end on the card) (train_gpu.{md,json}); 3. MINUTES of
# fine-tuning MODEL (a shipped name or a .pt path; default imaging-lag0; LR 2.5e-4, for batch 32) on the card, scenes from the CPU
# workers (all of each instance there if the test failed), the checkpoint written to $OUT as it goes: bring it back and measure it (bench_imaging_quality.py)
# before shipping anything. PARTS=tune skips 1 and 2. WIDTH=16 (say) makes step 3 a new model of that width,
# trained from scratch (the shipped architecture, default learning rate): is the 1-photon gap the width 8's capacity?
# WORKERS=N sets the CPU workers (default: all cores but two), so two runs can share a machine. MODALITY=spectral
# trains a spectral model instead (its instances and front end on the workers; the card runs the optimizer):
# fine-tunes MODEL where given, else a new one with the train flags in ARGS (say ARGS="--hemoglobin --mix").
# DRY=1 runs it on a CPU (a check of the script, nothing more).
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_setup.sh
MODEL_GIVEN=${MODEL:-}
DEVICE=cuda WORKERS=${WORKERS:-$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))} MINUTES=${MINUTES:-2.5} SECS=5 MODEL=${MODEL:-imaging-lag0} LR=${LR:-2.5e-4}
PARTS=${PARTS:-tests,bench,tune}
if [ "${DRY:-0}" = 1 ]; then DEVICE=cpu WORKERS=1 MINUTES=0.3 SECS=1; fi
# The DataLoader hands batches over in shared memory: a small /dev/shm would stop it.
df -h /dev/shm | tail -1
[ "${DRY:-0}" = 1 ] || mount -o remount,size=32G /dev/shm 2>/dev/null || true
step tests train_tests 60 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_model.py
# a failed GPU test may be the card's instances: then the fine-tuning makes them all on the CPU workers
TUNE_MORE=(); [ "$FAILED" = 0 ] || TUNE_MORE=(--cpu-instances)
step bench bench_train_gpu 90 python3 benchmarks/bench_train_gpu.py --device "$DEVICE" --workers "$WORKERS" --seconds "$SECS" \
  --out "$OUT"
if [ -n "${WIDTH:-}" ]; then START=(--width "$WIDTH"); NAME=imaging-w$WIDTH; else START=(--init "$MODEL" --lr "$LR"); NAME=$(basename "$MODEL" .pt)-gpu; fi
if [ "${MODALITY:-imaging}" = spectral ]; then
  # a spectral model, its own batch, window and learning rate: fine-tuned from MODEL where given, else a new
  # one from ARGS (say ARGS="--hemoglobin --mix")
  read -r -a START <<< "${ARGS:-}"
  if [ -n "$MODEL_GIVEN" ]; then START+=(--init "$MODEL_GIVEN"); else NAME=spectral-new-gpu; fi
  SHAPE=(--modality spectral); TUNE_MORE=()
else
  SHAPE=(--modality imaging --batch 32 --window 48 --settled 0.5)
fi
step tune train "$(python3 -c "print(int($MINUTES * 60 + 60))")" python3 -c "from rtdenoise.cli import main; main()" train \
  "$OUT/$NAME.pt" "${START[@]}" "${SHAPE[@]}" --device "$DEVICE" --minutes "$MINUTES" \
  --workers "$WORKERS" --threads 2 --seed "${SEED:-41}" "${TUNE_MORE[@]}"
rm -f "$OUT"/*.state
ls -la "$OUT"
exit "$FAILED"
