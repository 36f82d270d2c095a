#!/usr/bin/env bash
# Everything #11 asks of a lent GPU as one device call: step limits 90 + 360 + 150 s, the 600 s a
# call may run (the session's device budget is 15 minutes: run it with PARTS split if a step ran long):
#
#   run(command="bash benchmarks/gpu_session.sh", carry=[".whl"], timeout_s=600)
#
# .whl/ holds a pyzmq wheel for the lent machine's Python (it reaches no package registry; CUDA
# torch, numpy and onnxruntime are there). What comes back under $OUT: the card, the GPU tests'
# output, gpu.{md,json} (bench_gpu.py) and batch_gpu.{md,json} (bench_batch.py): copy the .md/.json
# into benchmarks/results/ and say which card gave them. PARTS=tests,gpu,batch (the default) picks
# steps, to split it over two calls; GPU_PARTS picks bench_gpu's parts (GPU_LIMIT its time limit);
# DRY=1 runs it on a CPU (figures meaningless; the CPU is slow).
set -uo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_setup.sh
DEVICE=cuda STEPS=200 SECONDS_LIVE=10 SECONDS_BATCH=5
if [ "${DRY:-0}" = 1 ]; then DEVICE=cpu STEPS=3 SECONDS_LIVE=1 SECONDS_BATCH=1; fi

PARTS=${PARTS:-tests,gpu,batch}
# 1. the GPU-marked tests: CUDA graphs per slot and per group, the engines, TensorRT where installed, training
step tests gpu_tests 90 python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_batch.py tests/test_engines.py tests/test_imaging_engines.py tests/test_model.py
# 2. engine.step at 128² and 512², 1 and 16 streams; the ZeroMQ floor; the live service (#11's GPU targets)
step gpu bench_gpu "${GPU_LIMIT:-360}" python3 benchmarks/bench_gpu.py --device "$DEVICE" --steps "$STEPS" --seconds "$SECONDS_LIVE" \
  --parts "${GPU_PARTS:-equal,live,floor_ipc,engine,breakdown}" --out "$OUT"
# 3. 16 streams of 128² and 512² through one service: stepped together against one by one
step batch bench_batch 150 python3 benchmarks/bench_batch.py --case imaging-lag0 --size 128 --size 512 \
  --seconds "$SECONDS_BATCH" --backend auto --out "$OUT/batch_gpu"
ls -la "$OUT"
exit "$FAILED"
