#!/usr/bin/env bash
# GPU check (issue 6 item 4), a few minutes on one H100/H200:
#   1. CRA training step, ours vs the official two-forward step (bench/cra_step.py),
#      DeepLabv2-R101 at 512x1024 crops, batch 4: fp32, then bf16 autocast + channels-last;
#   2. pseudo-labelling throughput: R101 on 1024x512 inputs, probabilities upsampled to
#      2048x1024, argmax + normalised entropy, written to a pseudo-label store.
# Prints the card, img/s and peak memory; the last line is the headline.
#
#   bash bench/gpu.sh                      # on the GPU machine
#   bash bench/gpu.sh --device cpu --tiny  # smoke test of the script on CPU (ResNet-18, tiny sizes)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
# A bare checkout on the GPU machine: import the package from src/ (no install needed).
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}"
DEVICE=cuda
TINY=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --tiny) TINY=1; shift ;;
    *) echo "usage: bench/gpu.sh [--device cuda|cpu] [--tiny]" >&2; exit 2 ;;
  esac
done
if [ "$TINY" = 1 ]; then
  STEP_CASE=(--backbone resnet18 --crop 32 64 --batch 2 --warmup 1 --iters 2)
  PL_ARGS=(resnet18 64 128 3)
else
  STEP_CASE=(--backbone resnet101 --crop 512 1024 --batch 4 --warmup 2 --iters 5)
  PL_ARGS=(resnet101 512 1024 20)
fi
OUT=${OUT:-runs/bench_gpu}
mkdir -p "$OUT"
date -u +"%Y-%m-%dT%H:%M:%SZ"
"$PYTHON" -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no CUDA device')"
[ "$DEVICE" = cpu ] || nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

echo "== CRA step, fp32"
"$PYTHON" bench/cra_step.py --device "$DEVICE" "${STEP_CASE[@]}" --json "$OUT/cra_step_fp32.json" | tee "$OUT/cra_step_fp32.txt"
echo "== CRA step, bf16 + channels-last"
"$PYTHON" bench/cra_step.py --device "$DEVICE" "${STEP_CASE[@]}" --amp bf16 --channels-last --json "$OUT/cra_step_bf16.json" | tee "$OUT/cra_step_bf16.txt"

echo "== pseudo-labelling throughput"
"$PYTHON" - "$DEVICE" "${PL_ARGS[@]}" "$OUT" <<'PY' | tee "$OUT/pseudo_label.txt"
import sys, tempfile, time
import numpy as np
import torch
from crossregion.data.pseudo_labels import PseudoLabelWriter
from crossregion.eval.inference import predict_probs
from crossregion.trust import normalized_entropy
from crossregion.models import build_segmenter

device, backbone, height, width, images = torch.device(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
num_classes = 19
segmenter = build_segmenter(backbone, num_classes).to(device).eval()
with tempfile.TemporaryDirectory() as folder:
    names = [f"img{i:03d}" for i in range(images)]
    writer = PseudoLabelWriter(folder, {
        "num_classes": num_classes, "class_names": [f"c{k}" for k in range(num_classes)],
        "palette": [[k, k, k] for k in range(num_classes)], "dataset": "cityscapes", "split": "train",
        "root": folder, "names": names, "checkpoint": None, "input_size": [width, height], "flip": False,
        "threshold": 0.01, "rare_share": 0.01, "rare_factor": 0.5})
    image = torch.randn(1, 3, height, width, device=device)
    timings = {"model": 0.0, "store": 0.0}
    with torch.no_grad():
        for index, name in enumerate(names):
            start = time.perf_counter()
            probs = predict_probs(segmenter, image, output_size=(2 * height, 2 * width))
            label = probs.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
            entropy = normalized_entropy(probs)[0].float().cpu().numpy()
            middle = time.perf_counter()
            writer.write(name, label, entropy)
            if index >= 2:  # first two are warm-up
                timings["model"] += middle - start
                timings["store"] += time.perf_counter() - middle
    writer.finish()
timed = images - 2
total = timings["model"] + timings["store"]
print(f"{backbone} {width}x{height} input -> {2 * width}x{2 * height} maps: model+entropy {timed / timings['model']:.2f} img/s, "
      f"store write {timed / timings['store']:.2f} img/s, end to end {timed / total:.2f} img/s")
print(f"pseudo_label throughput {timed / total:.2f} img/s")
PY

echo "gpu check: fp32 $(tail -n 1 "$OUT/cra_step_fp32.txt"); bf16+CL $(tail -n 1 "$OUT/cra_step_bf16.txt"); $(tail -n 1 "$OUT/pseudo_label.txt")"
