#!/usr/bin/env bash
# The checks that need a CUDA device, as one script that fits one device session (under 8 minutes):
#   1. sync-freedom of the fast paths (set_sync_debug_mode("error")), exactness against the
#      reference on the device, kernel launches per step at 10/62/200 tensors;
#   2. step time at ResNet-18 shapes (62 tensors, 11.7 M parameters) and at GPT-2-medium shapes
#      (292 tensors, 355 M parameters), as ratios to fused Adam;
#   3. one CIFAR-10 ResNet-34 epoch with HVAdam (img/s, GPU utilisation).
# Usage: bash benchmarks/gpu_checks.sh OUTDIR   (results land in OUTDIR as text files)
set -uo pipefail
out=${1:-gpu-results}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
$py -c "import torch; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"
timeout 130 $py benchmarks/cuda_sync_check.py 2>&1 | tee "$out/sync_check.txt"
timeout 80 $py benchmarks/step_time.py --device cuda --markdown 2>&1 | tee "$out/step_time.md"
timeout 100 $py benchmarks/step_time.py --device cuda --markdown --shapes transformer-350m \
    --steps 10 --only "HVAdam default,Anon default,Adam foreach" 2>&1 | tee "$out/step_time_350m.md"
timeout 150 $py benchmarks/cifar_epoch.py --device cuda --workers 8 2>&1 | tee "$out/cifar_epoch.txt"
