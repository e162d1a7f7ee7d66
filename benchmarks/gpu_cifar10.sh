#!/usr/bin/env bash
# ResNet-50 from scratch on full CIFAR-10 on one GPU: goal >= 95% test accuracy in <= 15 minutes (H100).
#
#   benchmarks/gpu_cifar10.sh [--set training.epochs=60 ...]      (extra arguments go to `triptych run`)
#
# Needs TensorFlow with CUDA (pip install -e ".[gpu]") and CIFAR-10: $TRIPTYCH_MIRROR/cifar10/{train,test}
# class folders, or the network once (keras.datasets). Prints one JSON line: accuracy, minutes, goals met.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-runs/gpu_cifar10}
CONFIG=${CONFIG:-configs/cifar10_resnet50_gpu.yaml}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
if [ -z "${TRIPTYCH_MIRROR:-}" ] && [ -d ../shared/datasets/cifar10 ]; then export TRIPTYCH_MIRROR=../shared/datasets; fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "warning: nvidia-smi failed"
"$PY" -c "import tensorflow as tf, sys; g = tf.config.list_physical_devices('GPU'); print('TensorFlow', tf.__version__, 'GPUs:', g); sys.exit(0 if g else 'TensorFlow sees no GPU: install the [gpu] extra')"

start=$(date +%s)
"$PY" -m triptych run "$CONFIG" --out "$OUT" --overwrite --no-report "$@"
seconds=$(( $(date +%s) - start ))

"$PY" - "$OUT" "$seconds" <<'PY'
import json, pathlib, sys
out, seconds = pathlib.Path(sys.argv[1]), int(sys.argv[2])
for run in sorted(p for p in out.iterdir() if (p / "metrics.json").exists()):
    metrics = json.loads((run / "metrics.json").read_text())
    manifest = json.loads((run / "manifest.json").read_text())
    result = {
        "experiment": run.name,
        "test_accuracy": round(metrics["accuracy"], 4),
        "accuracy_ci95": metrics.get("accuracy_ci95"),
        "wall_minutes": round(seconds / 60, 2),
        "train_minutes": round(manifest.get("train_seconds", 0) / 60, 2),
        "epochs": sum(1 for _ in open(run / "history.csv")) - 1,
        "goal_accuracy_95": metrics["accuracy"] >= 0.95,
        "goal_15_minutes": seconds <= 15 * 60,
        "versions": manifest.get("versions", {}),
    }
    print(json.dumps(result))
PY
