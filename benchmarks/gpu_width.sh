#!/usr/bin/env bash
# Is the imaging model's 1-photon gap its width? One device call (about MINUTES + 2 minutes):
#
#   run(command="MINUTES=5 bash benchmarks/gpu_width.sh", carry=[".whl"], timeout_s=480)
#
# gpu_train.sh's tests and bench (the front end as a CUDA graph against eager), then two imaging models trained
# from scratch at the same time on the same card, width 8 (the shipped architecture) and WIDE (16), each with half
# the CPU workers, same seed: the same minutes and conditions for both. Bring both checkpoints back and measure them
# (bench_imaging_quality.py). Results: $OUT/train_gpu.{md,json}, $OUT/w*/imaging-w*.pt, every log in $OUT/logs.tgz.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/rtdenoise-gpu}; export OUT
PARTS=tests,bench bash benchmarks/gpu_train.sh; rc=$?
[ -d /tmp/site ] && export PYTHONPATH=/tmp/site  # the pyzmq the first run unpacked; the runs below find it there
HALF=$(( $(nproc) > 4 ? ($(nproc) - 2) / 2 : 1 ))
for w in 8 "${WIDE:-16}"; do
  OUT=$OUT/w$w PARTS=tune WIDTH=$w WORKERS=$HALF bash benchmarks/gpu_train.sh > "$OUT/tune$w.out" 2>&1 &
done
wait
for f in "$OUT"/tune*.out; do echo "== $f"; tail -n 30 "$f"; done
(cd "$OUT" && tar czf /tmp/logs.tgz --exclude='*.pt' --exclude='train_gpu.*' . && mv /tmp/logs.tgz . \
  && find . -type f ! -name logs.tgz ! -name '*.pt' ! -name 'train_gpu.*' -delete)
ls -laR "$OUT"
exit $rc
