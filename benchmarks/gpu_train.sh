#!/usr/bin/env bash
# Training on a lent GPU, as one device call (about MINUTES + 1.5 minutes):
#
#   run(command="MINUTES=2.5 bash benchmarks/gpu_train.sh", carry=[".whl"], timeout_s=270)
#
# 1. the GPU-marked training test (a CUDA run follows the CPU's); 2. bench_train_gpu.py: the optimizer's
# pace on the card against the pace the CPU workers make instances at (train_gpu.{md,json}); 3. MINUTES of
# fine-tuning the shipped imaging-lag0 on the card (instances from the CPU workers), the checkpoint written
# to $OUT as it goes: bring it back, measure it (bench_imaging_quality.py) before shipping anything.
# DRY=1 runs it on a CPU (a check of the script, nothing more).
set -uo pipefail
source benchmarks/gpu_setup.sh
DEVICE=cuda WORKERS=$(( $(nproc) - 2 )) MINUTES=${MINUTES:-2.5} SECS=5
if [ "${DRY:-0}" = 1 ]; then DEVICE=cpu WORKERS=1 MINUTES=0.3 SECS=1; fi
# The DataLoader hands batches over in shared memory: a small /dev/shm would stop it.
df -h /dev/shm | tail -1
mount -o remount,size=32G /dev/shm 2>/dev/null || true
t0=$SECONDS
timeout 90 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_model.py > "$OUT/train_tests.log" 2>&1
echo "== training test: exit $? after $((SECONDS - t0)) s"; tail -n 5 "$OUT/train_tests.log"
t0=$SECONDS
timeout 90 python3 benchmarks/bench_train_gpu.py --device "$DEVICE" --workers "$WORKERS" --seconds "$SECS" --out "$OUT" \
  > "$OUT/bench_train_gpu.log" 2>&1
echo "== bench_train_gpu: exit $? after $((SECONDS - t0)) s"; tail -n 12 "$OUT/bench_train_gpu.log"
t0=$SECONDS
timeout "$(python3 -c "print(int($MINUTES * 60 + 60))")" python3 -c "from rtdenoise.cli import main; main()" train \
  "$OUT/imaging-lag0-gpu.pt" --init imaging-lag0 --modality imaging --device "$DEVICE" --minutes "$MINUTES" \
  --workers "$WORKERS" --threads 2 --batch 32 --window 48 --settled 0.5 --lr 2.5e-4 --seed 31 > "$OUT/train.log" 2>&1
echo "== fine-tune: exit $? after $((SECONDS - t0)) s"; tail -c 1500 "$OUT/train.log"
rm -f "$OUT"/*.state
ls -la "$OUT"
