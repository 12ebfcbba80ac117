#!/usr/bin/env bash
# Every GPU check and figure of this project in one call on a lent CUDA machine: the README's GPU benchmarks and the
# CUDA tests, most important first, each under its own time limit and all inside BUDGET seconds (default 560).
#   here, once:    bash benchmarks/gpu_pack.sh          (packs .gpu/: the wheels and datasets the GPU image lacks)
#   on the device: run(command="bash benchmarks/gpu.sh", carry=[".gpu"], timeout_s=600)
#   some steps:    bash benchmarks/gpu.sh lstm_run dnn_throughput   (e.g. those the budget skipped, in a second call
#                  while the machine is still warm: it stays 30 s after a call)
#   the plumbing, on this CPU (every command, tiny): SMOKE=1 PYTHON=python bash benchmarks/gpu.sh
# Writes $OUT/log.txt (every command's output) and $OUT/results.json (each step's exit code, seconds and JSON, saved
# after every step, so a call cut short keeps what finished); prints a summary last. Without $OUT: /tmp/redes-gpu.
# WORK=DIR and TEXT=FILE move its working folder and corpus (the tests do).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-/tmp/redes-gpu}
work=${WORK:-/tmp/redes-gpu-work}  # benchmark JSON, runs, datasets: not sent back (results.json gathers them)
mkdir -p "$out" "$work"
py=${PYTHON:-python3}
budget=${BUDGET:-560}  # inside the device tool's 600 s a command (its machine's start is not counted there)
export PYTHONUNBUFFERED=1 PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
log=$out/log.txt
: > "$log"

# -- what the image lacks ------------------------------------------------------------------------------------------
if compgen -G ".gpu/whl/*.whl" > /dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$work/site" \
    .gpu/whl/*.whl >> "$log" 2>&1 || { echo "error: the carried wheels did not install (see $log)"; exit 2; }
  export PYTHONPATH=$PYTHONPATH:$work/site
fi
data=$work/datasets
mkdir -p "$data/FashionMNIST/raw"
for gz in .gpu/data/*-ubyte.gz; do
  [ -f "$gz" ] || continue
  raw=$data/FashionMNIST/raw/$(basename "$gz" .gz)
  [ -f "$raw" ] || gunzip -c "$gz" > "$raw"
done
text=${TEXT:-.gpu/data/tinyshakespeare.txt}
[ -f "$text" ] || text=../shared/datasets/tinyshakespeare.txt

# -- SMOKE=1: every command as below, tiny and on the CPU, to check the plumbing without a GPU ----------------------
gpu=trainer=gpu preset_device=""  # unquoted where used: words
if [ -n "${SMOKE:-}" ]; then
  gpu=trainer=cpu preset_device="trainer.accelerator=cpu trainer.precision=32-true model.compile=false"
fi
smoke() { [ -z "${SMOKE:-}" ] || echo "$@"; }  # this step's tiny sizes, in SMOKE mode only
export py data text gpu work preset_device SMOKE

# -- the steps -----------------------------------------------------------------------------------------------------
env_step() {
  rm -f "$work/compile_failed"  # (a warm machine keeps $work from an earlier call)
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv || true
  "$py" - "$work/env.json" "$work/compile_failed" <<'PY'
import json, os, platform, sys, torch, lightning, torchmetrics, hydra
import filelock, matplotlib, pandas, PIL, pytest, rich, tensorboard  # what the steps import: a missing one, here
environment = {"python": platform.python_version(), "torch": torch.__version__, "lightning": lightning.__version__,
               "torchmetrics": torchmetrics.__version__, "hydra": hydra.__version__, "cuda": torch.version.cuda,
               "cudnn": torch.backends.cudnn.version(), "cpus": os.cpu_count(),
               "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
if torch.cuda.is_available():  # torch.compile's Triton kernels need a C compiler on the machine to launch
    try:
        torch.compile(lambda x: x * 2)(torch.ones(8, device="cuda"))
        environment["compile"] = "works"
    except Exception as err:  # the CNN steps then run uncompiled (model.compile=false) rather than fail
        environment["compile"] = f"failed, the CNN steps run without it: {type(err).__name__}: {err}"[:400]
        open(sys.argv[2], "w").write(environment["compile"])
print(json.dumps(environment))
open(sys.argv[1], "w").write(json.dumps(environment))  # into results.json
PY
}
compile_off() { [ ! -f "$work/compile_failed" ] || echo model.compile=false; }  # see env_step
tests_step() {
  # -v: a test per line as it ends, kept if cut short; -o addopts: one process, and no pytest-xdist (not in the image)
  "$py" -m pytest -v -rA -p no:cacheprovider -o addopts= tests/test_cuda.py
}
cnn_tta_step() {  # the CNN to 93% and 94% on Fashion-MNIST: the issue's <= 6 s target
  "$py" benchmarks/time_to_accuracy.py experiment=cnn_gpu "paths.data_dir=$data" 'targets=[0.93,0.94]' warmup=20 \
    "out=$work/cnn_tta.json" $preset_device $(compile_off) $(smoke warmup=1 trainer.max_epochs=1 data.train_size=512)
}
cnn_fast_tta_step() {  # a candidate for the <= 6 s target, its accuracy measured on a CPU only (README): batches
  # of 1024 (half the steps an epoch, and the step is host-bound), label smoothing, a 15-epoch cycle
  "$py" benchmarks/time_to_accuracy.py experiment=cnn_gpu "paths.data_dir=$data" 'targets=[0.93,0.94]' warmup=20 \
    data.batch_size=1024 model.lr=8e-3 model.label_smoothing=0.1 trainer.max_epochs=15 \
    "out=$work/cnn_fast_tta.json" $preset_device $(compile_off) $(smoke warmup=1 trainer.max_epochs=1 data.train_size=512)
}
lstm_throughput_step() {  # 2x512 LSTM characters/s, Lightning against the plain loop
  "$py" benchmarks/throughput.py experiment=lstm_gpu "data.path=$text" steps=150 "out=$work/lstm_throughput.json" \
    $preset_device $(smoke steps=2 warmup=1 repeats=1 model.net.hidden_size=32 data.seq_len=32)
}
dnn_throughput_step() {  # samples/s at the default batch of 8192
  "$py" benchmarks/throughput.py model=dnn "$gpu" "paths.data_dir=$data" steps=200 "out=$work/dnn_throughput.json" \
    $(smoke steps=2 warmup=1 repeats=1 data.rows=20000)
}
dnn_batch_65536_step() {  # what the GPU does with 8x the rows a step; an epoch is then 10 steps, so the Lightning
  # figure also pays each epoch's end (the training AUROC over 720k rows, the non-finite check): an upper bound on cost
  "$py" benchmarks/throughput.py model=dnn "$gpu" "paths.data_dir=$data" steps=60 data.batch_size=65536 \
    "out=$work/dnn_batch_65536.json" $(smoke steps=2 warmup=1 repeats=1 data.rows=20000 data.batch_size=4096)
}
lstm_run_step() {  # the preset's two-minute run: test and best validation nats/char
  # Its one-cycle schedule must end before max_time stops the run (cut short, it stops at a high learning rate): the
  # preset's max_steps assumes ~1.2M characters/s; with lstm_throughput's measured rate, 90 s of steps instead (the
  # other 30 s: validation every 300 steps with its checkpoints and text sample, which that rate leaves out).
  local steps
  steps=$("$py" - "$work/lstm_throughput.json" 2>/dev/null <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"trainer.max_steps={int(90 * r['lightning_samples_per_s'] / r['batch_size'])}")
PY
)
  echo "lstm_run: ${steps:-max_steps of the preset} (from lstm_throughput.json, if measured)"
  "$py" train.py experiment=lstm_gpu "data.path=$text" "hydra.run.dir=$work/lstm_run" callbacks.progress_bar=null \
    $steps $preset_device $(smoke trainer.max_steps=3 model.net.hidden_size=32 data.seq_len=32 data.eval_seq_len=64)
}
cnn_throughput_step() {
  "$py" benchmarks/throughput.py experiment=cnn_gpu "paths.data_dir=$data" steps=100 "out=$work/cnn_throughput.json" \
    $preset_device $(compile_off) $(smoke steps=2 warmup=1 repeats=1 data.train_size=512)
}
lstm_fp16_step() {  # float16 with the gradient scaler, against bf16 autocast around a float32 LSTM
  "$py" benchmarks/throughput.py experiment=lstm_gpu "data.path=$text" trainer.precision=16-mixed steps=150 \
    "out=$work/lstm_fp16_throughput.json" $preset_device \
    $(smoke steps=2 warmup=1 repeats=1 model.net.hidden_size=32 data.seq_len=32)
}
lstm_profile_step() {  # where each path's LSTM step goes (torch.profiler): GPU kernel time against wall time
  "$py" benchmarks/throughput.py experiment=lstm_gpu "data.path=$text" steps=20 repeats=1 profile=10 \
    "out=$work/lstm_profile.json" $preset_device \
    $(smoke steps=2 warmup=1 profile=1 model.net.hidden_size=32 data.seq_len=32)
}
dnn_tta_step() {
  "$py" benchmarks/time_to_accuracy.py model=dnn "$gpu" "paths.data_dir=$data" 'targets=[0.80,0.81,0.812]' \
    "out=$work/dnn_tta.json" $(smoke data.rows=20000 trainer.max_epochs=1)
}
cnn_run_step() {  # the preset as a user runs it: python train.py experiment=cnn_gpu
  "$py" train.py experiment=cnn_gpu "paths.data_dir=$data" "hydra.run.dir=$work/cnn_run" callbacks.progress_bar=null \
    $preset_device $(compile_off) $(smoke trainer.max_epochs=1 data.train_size=512)
}

# name:limit:least, in seconds: a step runs if at least `least` seconds of the budget are left, and is stopped after
# `limit` (or when the budget ends). A step cut short loses its figures: `least` is what it needs, with a margin.
# The issue's GPU targets first (they prove the CUDA path runs, too): the CNN's time to 94%, the LSTM's rate and loss,
# the DNN's rate, the CNN's ratio; then the tests of what they do not show, given what is left (-v keeps a partial run).
# env's 60 s: a cold `import torch` and the first torch.compile (inductor, Triton) on a fresh machine; it ends sooner
# when they are quick, and cut short it would lose only env.json (the CNN steps then run compiled).
all_steps=(env:60:10 cnn_tta:200:120 cnn_fast_tta:150:100 lstm_throughput:120:60 lstm_run:200:170 dnn_throughput:120:60
           cnn_throughput:150:90 tests:300:90 lstm_fp16:120:60 lstm_profile:120:60 dnn_tta:120:60 cnn_run:150:100
           dnn_batch_65536:120:60)
wanted=("$@")

record() {  # step, exit code, seconds: into results.json, with the step's JSON files
  "$py" - "$out/results.json" "$work" "$@" <<'PY'
import json, sys
from pathlib import Path
results_file, work, step, rc, seconds = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
results = json.loads(results_file.read_text()) if results_file.exists() else {}
entry = {"rc": rc, "seconds": seconds}
for f in sorted(work.glob(f"{step}*.json")):
    entry[f.stem] = json.loads(f.read_text())
metrics = work / step / "metrics.json"  # a train.py run's
if metrics.exists():
    entry["metrics"] = json.loads(metrics.read_text())
results[step] = entry
results_file.write_text(json.dumps(results, indent=2) + "\n")
PY
}

rm -f "$out/results.json"
start=$SECONDS
for item in "${all_steps[@]}"; do
  IFS=: read -r step limit least <<< "$item"
  if [ ${#wanted[@]} -gt 0 ] && [[ ! " ${wanted[*]} " == *" $step "* ]]; then continue; fi
  left=$((budget - (SECONDS - start)))
  if [ "$left" -lt "$least" ]; then echo "skipped $step: ${left} s of the budget left, it needs ${least}" | tee -a "$log"; continue; fi
  [ "$limit" -gt "$left" ] && limit=$left
  rm -rf "${work:?}/$step" "$work/$step"*.json
  echo "=== $step (limit ${limit}s) ===" >> "$log"
  t0=$SECONDS
  export -f smoke compile_off "${step}_step"
  timeout --kill-after=10 "$limit" bash -c "${step}_step" >> "$log" 2>&1
  rc=$?
  echo "$step: exit $rc in $((SECONDS - t0)) s" | tee -a "$log"
  record "$step" "$rc" "$((SECONDS - t0))"
done

# -- summary -------------------------------------------------------------------------------------------------------
"$py" - "$out/results.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
def rate(j, key):
    return f"{j[f'lightning_{key}']:,.0f} vs plain {j[f'plain_{key}']:,.0f} /s, ratio {j['ratio']}, peak GPU MiB {j['peak_gpu_mib']}"
for step, e in r.items():
    line = f"{step}: exit {e['rc']}, {e['seconds']} s"
    for name, j in e.items():
        if not isinstance(j, dict):
            continue
        if "seconds_to_target" in j:
            line += f" | {name}: {j['metric']} reached {j['seconds_to_target']} (s), last {j['curve'][-1] if j['curve'] else None}, warm-up {j['warmup_seconds']} s, peak GPU MiB {j.get('peak_gpu_mib')}"
        elif "ratio" in j:
            line += f" | {name} ({j['precision']}, batch {j['batch_size']}): " + rate(j, "chars_per_s" if "lightning_chars_per_s" in j else "samples_per_s")
            for path, p in j.get("profile", {}).items():
                line += f" | profiled {path}: {p['wall_ms_per_step']} ms a step, GPU {p['gpu_ms_per_step']} ms (busy {p['gpu_busy']})"
        elif name == "env":
            line += " | " + ", ".join(f"{k} {v}" for k, v in j.items())
        elif name == "metrics":
            line += " | " + ", ".join(f"{k} {v}" for k, v in j.items() if k.startswith("test/") or k.endswith("_best")
                                     or k in ("epochs", "steps", "train_seconds", "device"))
    print(line)
PY
