# Sourced by the scripts for a lent GPU machine (gpu_session.sh, gpu_train.sh): $OUT, pyzmq from .whl/
# (the machine reaches no package registry; CUDA torch, numpy, scipy, msgpack and onnxruntime are there),
# rtdenoise importable, the card's name in $OUT/card.txt, and `step`: one part of a script, in its own time limit
# (FAILED=1 once a part fails: the script exits with it). Run from the repository's root.
OUT=${OUT:-/tmp/rtdenoise-gpu}
mkdir -p "$OUT"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1 && ! python3 -c "import zmq" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
# an editable install (the shipped models are the package rtdenoise._shipped, mapped from models/); where pip
# cannot make one there, the same layout through PYTHONPATH
(cd /tmp && python3 -c "import rtdenoise._shipped") 2>/dev/null \
  || python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . \
  || { ln -sfn ../../models src/rtdenoise/_shipped && export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}; }
(cd /tmp && python3 -c "import rtdenoise._shipped") || { echo "could not install rtdenoise here"; exit 1; }
export PYTHONUNBUFFERED=1
(nvidia-smi -L || echo "no nvidia-smi") > "$OUT/card.txt" 2>&1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())" >> "$OUT/card.txt"
cat "$OUT/card.txt"
step() {  # part, name, time limit (s), command...: runs when PARTS names the part; its log is $OUT/name.log
  local part=$1 name=$2 limit=$3; shift 3
  case ",$PARTS," in *",$part,"*) ;; *) return 0 ;; esac
  local t0=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  [ "$rc" = 0 ] || FAILED=1
  echo "== $name: exit $rc after $((SECONDS - t0)) s"; tail -n 25 "$OUT/$name.log"
}
FAILED=0
