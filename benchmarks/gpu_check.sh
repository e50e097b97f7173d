#!/usr/bin/env bash
# The GPU check: does trainforge's GPU path work on this machine? About 5-10 minutes on one GPU.
#
#   pip install -e '.[gpu]'            # with a CUDA build of torch (see the README's GPU section)
#   bash benchmarks/gpu_check.sh       # from the repository root; PYTHON=/path/to/python to choose one
#
# Prints PASS/FAIL/SKIP per check and a summary; exits 1 when a check failed. Without a GPU it prints
# "no GPU: skipped" and exits 0 (CI runs it that way). Work files go to a temporary folder (kept on failure).
#
# Checks: trainforge doctor --require-gpu; CUDA CNN training in bf16-mixed and in 16-mixed; predict --provider
# cuda --no-fallback; CUDA EP vs CPU EP parity at batch 1/64/1024; p50/p99 latency of torch CUDA vs onnxruntime
# CUDA with IO binding at batch 1/64/1024; resume of a CUDA checkpoint on CUDA and on CPU; --nproc 2 on the
# GPUs there are; MLflow system metrics (GPU utilization and memory) on the run.
set -u

PY=${PYTHON:-$(command -v python || command -v python3)}
PY=$(command -v "$PY")  # absolute: the checks run in a temporary folder
if ! GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)"); then
    echo "FAIL  torch does not import with $PY"
    exit 1
fi
if [ "$GPUS" = 0 ]; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "FAIL  nvidia-smi sees a GPU but torch does not: install a CUDA build of torch (README, GPU section)"
        exit 1
    fi
    echo "no GPU: skipped"
    exit 0
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/trainforge-gpu-check.XXXXXX")
cd "$WORK" || exit 1
export MLFLOW_TRACKING_URI="sqlite:///$WORK/mlruns/mlflow.db" MLFLOW_EXPERIMENT_NAME=gpu-check
export MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL=1 MLFLOW_LOGGING_LEVEL=WARNING
TF=("$PY" -m trainforge.cli.main)
PASSED=0 FAILED=0 SKIPPED=0
STARTED=$(date +%s)
echo "GPU check: $GPUS GPU(s), python $PY, work folder $WORK"

# check NAME COMMAND...: run it, output to NAME.log; exit 0 PASS, 77 SKIP (its last line says why), else FAIL
check() {
    local name=$1 t0 rc
    shift
    t0=$(date +%s)
    "$@" >"$name.log" 2>&1
    rc=$?
    local took=$(( $(date +%s) - t0 ))
    if [ $rc -eq 0 ]; then
        PASSED=$((PASSED + 1)); printf 'PASS  %-28s %4ss  %s\n' "$name" "$took" "$(tail -n 1 "$name.log")"
    elif [ $rc -eq 77 ]; then
        SKIPPED=$((SKIPPED + 1)); printf 'SKIP  %-28s %4ss  %s\n' "$name" "$took" "$(tail -n 1 "$name.log")"
    else
        FAILED=$((FAILED + 1)); printf 'FAIL  %-28s %4ss  (exit %s) see %s/%s.log:\n' "$name" "$took" "$rc" "$WORK" "$name"
        tail -n 5 "$name.log" | sed 's/^/        /'
    fi
}

# json_field FILE EXPR: evaluate EXPR on the last JSON line of FILE (as `r`)
json_field() {
    "$PY" -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1]) if l.startswith('{')][-1]; print($2)" "$1"
}

train_cnn() {  # train_cnn PRECISION OUT: CNN on digits on cuda; test accuracy must reach 0.9
    local precision=$1 out=$2
    if [ "$precision" = bf16-mixed ] && ! "$PY" -c "import torch,sys; sys.exit(0 if torch.cuda.is_bf16_supported() else 1)"; then
        echo "this GPU has no bfloat16"; return 77
    fi
    "${TF[@]}" train --model cnn --dataset digits --epochs 10 --patience 0 --device cuda --precision "$precision" \
        --quiet --json -p trainer.system_metrics=true >"$out" || return 1
    json_field "$out" "f\"run {r['run_id']}: test accuracy {r['metrics']['test_accuracy']:.4f}\""
    [ "$(json_field "$out" "r['metrics']['test_accuracy'] > 0.9")" = True ]
}

predict_cuda() {
    local run
    run=$(json_field fp16.json "r['run_id']") || return 1
    "${TF[@]}" data --run "$run" --split test --output test.csv || return 1
    "${TF[@]}" predict "runs:/$run" --input test.csv --target target --provider cuda --no-fallback --json >predict.json \
        || return 1
    json_field predict.json "f\"{r['rows']} rows on {r['provider']}, accuracy {r['metrics']['accuracy']:.4f}\""
    [ "$(json_field predict.json "r['provider']")" = CUDAExecutionProvider ]
}

ort_vs_torch() {  # parity (CUDA EP vs CPU EP) and latency (torch CUDA vs ORT CUDA + IO binding)
    "$PY" - "$1" "$(json_field fp16.json "r['run_id']")" <<'EOF'
import sys
import time

import numpy as np
import onnxruntime as ort
import torch

from trainforge.contracts import DataMeta
from trainforge.exporting.predictor import session_options
from trainforge.exporting.providers import CPU, CUDA, session_providers
from trainforge.tracking import store
from trainforge.training import data as data_mod
from trainforge.training.callbacks import load_checkpoint
from trainforge.training.modeling import InferenceModel, build_model
from trainforge.training.tasks import get_task

what, run = sys.argv[1], sys.argv[2]
store.setup_uri()
path = store.download(run, "onnx/model.onnx")
ckpt = load_checkpoint(store.download(run, "checkpoints/best.pt"))
meta = DataMeta.from_dict(ckpt["meta"])
bundle = data_mod.load(ckpt["config"]["dataset"], ckpt["config"]["trainer"], task=meta.task)
rows = data_mod.sample_rows(bundle.test)
pool = np.ascontiguousarray(np.concatenate([rows] * (1024 // len(rows) + 1))[:1024], dtype=np.float32)
cuda = ort.InferenceSession(path, session_options(), providers=session_providers([CUDA]))
if cuda.get_providers()[0] != CUDA:
    sys.exit(f"the CUDA EP fell back to {cuda.get_providers()[0]}")
names = [o.name for o in cuda.get_outputs()]
if what == "parity":
    cpu = ort.InferenceSession(path, session_options(), providers=[CPU])
    worst = {}
    for batch in (1, 64, 1024):
        x = pool[:batch]
        worst[batch] = max(float(np.abs(a - b).max()) for a, b in zip(cpu.run(names, {"input": x}),
                                                                       cuda.run(names, {"input": x}), strict=True))
    print("max abs diff CUDA EP vs CPU EP: " + ", ".join(f"batch {b}: {d:.2g}" for b, d in worst.items()))
    sys.exit(0 if max(worst.values()) <= 1e-4 else 1)
model = build_model(ckpt["config"]["model"], meta)
model.load_state_dict(ckpt["state_dict"])
wrapped = InferenceModel(model, get_task(meta.task, meta=meta)).eval().to("cuda")
out = []
for batch in (1, 64, 1024):
    x = pool[:batch]
    xt = torch.from_numpy(x).to("cuda")
    binding = cuda.io_binding()
    binding.bind_ortvalue_input("input", ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
    for name in names:
        binding.bind_output(name, "cuda")

    def torch_cuda(xt=xt):
        with torch.inference_mode():
            wrapped(xt)
        torch.cuda.synchronize()

    def ort_cuda(binding=binding):
        cuda.run_with_iobinding(binding)

    for label, fn in (("torch CUDA", torch_cuda), ("ORT CUDA+IO binding", ort_cuda)):
        for _ in range(20):
            fn()
        times = []
        for _ in range(300):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        p50, p99 = np.percentile(times, 50) * 1e6, np.percentile(times, 99) * 1e6
        print(f"batch {batch:>4}  {label:<20} p50 {p50:8.1f} us  p99 {p99:8.1f} us")
        out.append(f"b{batch} {label.split()[0]} {p50:.0f}/{p99:.0f}")
print("p50/p99 us: " + "; ".join(out))
EOF
}

resume_on() {  # resume_on DEVICE: interrupt a CUDA run after 3 of 8 epochs, resume it on DEVICE, compare
    "$PY" - "$1" <<'EOF'
import sys
from trainforge.contracts import Callback
from trainforge.run.api import train

device = sys.argv[1]
common = dict(model__name="cnn", dataset__name="digits", trainer__epochs=8, trainer__patience=0, export=False,
              quiet=True, overrides=["trainer.resume_every_s=0"])


class Stop(Callback):
    def on_epoch_end(self, trainer, epoch, metrics):
        if epoch == 3:
            self.run_id = next(cb.run_id for cb in trainer.callbacks if type(cb).__name__ == "ResumeCheckpoint")
            raise KeyboardInterrupt


full = train(trainer__device="cuda", **common)
stop = Stop()
try:
    train(trainer__device="cuda", callbacks=[stop], **common)
    sys.exit("the run was not interrupted")
except KeyboardInterrupt:
    pass
resumed = train(resume=stop.run_id, trainer__device=device, quiet=True, export=False)
a, b = full.metrics["test_accuracy"], resumed.metrics["test_accuracy"]
print(f"CUDA checkpoint resumed on {device}: {resumed.epochs_run} epochs, test accuracy {b:.4f} "
      f"(uninterrupted on CUDA {a:.4f}; loss {resumed.metrics['test_loss']:.5f} vs {full.metrics['test_loss']:.5f})")
tolerance = 0.02 if device == "cuda" else 0.05  # CUDA kernels are not bitwise deterministic; the CPU differs more
sys.exit(0 if resumed.epochs_run == 8 and abs(a - b) <= tolerance else 1)
EOF
}

nproc2() {
    if [ "$GPUS" -lt 2 ]; then  # one GPU: two processes must be refused with one clear error line
        "${TF[@]}" train --model cnn --dataset digits --epochs 1 --device cuda --nproc 2 --quiet >nproc.out 2>nproc.err
        local rc=$?
        cat nproc.err
        [ $rc -eq 1 ] && grep -q "needs one GPU per process" nproc.err && ! grep -q Traceback nproc.err || return 1
        echo "1 GPU: --nproc 2 refused with one line; DDP on 2 GPUs not tried"; return 77
    fi
    "${TF[@]}" train --model cnn --dataset digits --epochs 5 --device cuda --nproc 2 --quiet --json --no-export >ddp.json \
        || return 1
    "$PY" - "$(json_field ddp.json "r['run_id']")" <<'EOF'
import sys
from mlflow.tracking import MlflowClient
run = MlflowClient().get_run(sys.argv[1])
backend = run.data.tags.get("trainforge.distributed", "")
print(f"DDP {backend}: test accuracy {run.data.metrics['test_accuracy']:.4f}")
sys.exit(0 if backend.startswith("nccl") and run.data.metrics["test_accuracy"] > 0.9 else 1)
EOF
}

system_metrics() {
    "$PY" - "$(json_field fp16.json "r['run_id']")" <<'EOF'
import sys
from mlflow.tracking import MlflowClient
keys = sorted(k for k in MlflowClient().get_run(sys.argv[1]).data.metrics if k.startswith("system/"))
gpu = [k for k in keys if k.startswith("system/gpu_0_")]
print(f"{len(keys)} system metrics, GPU: {', '.join(k.split('/')[-1] for k in gpu) or 'none (pip install nvidia-ml-py)'}")
sys.exit(0 if "system/gpu_0_utilization_percentage" in keys and "system/gpu_0_memory_usage_megabytes" in keys else 1)
EOF
}

check doctor "${TF[@]}" doctor --require-gpu
check train-cuda-bf16-mixed train_cnn bf16-mixed bf16.json
check train-cuda-16-mixed train_cnn 16-mixed fp16.json
check predict-cuda-no-fallback predict_cuda
check parity-cuda-ep-vs-cpu-ep ort_vs_torch parity
check latency-torch-vs-ort-cuda ort_vs_torch latency
check resume-cuda-on-cuda resume_on cuda
check resume-cuda-on-cpu resume_on cpu
check nproc-2 nproc2
check system-metrics system_metrics
cat latency-torch-vs-ort-cuda.log 2>/dev/null | grep '^batch'

echo "summary: $PASSED passed, $FAILED failed, $SKIPPED skipped in $(( $(date +%s) - STARTED )) s"
if [ $FAILED -eq 0 ]; then
    rm -rf "$WORK"
    exit 0
fi
echo "logs kept in $WORK"
exit 1
