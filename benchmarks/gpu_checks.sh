#!/usr/bin/env bash
# The checks that need a CUDA device, as one script: sync-freedom and exactness of the fast paths,
# the step-time table, and one CIFAR-10 ResNet-34 epoch against a torchvision DataLoader pipeline.
# Usage: bash benchmarks/gpu_checks.sh OUTDIR   (results land in OUTDIR as text files)
set -uo pipefail
out=${1:-gpu-results}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"
timeout 60 python3 benchmarks/cuda_sync_check.py 2>&1 | tee "$out/sync_check.txt"
timeout 90 python3 benchmarks/step_time.py --device cuda --markdown 2>&1 | tee "$out/step_time.md"
timeout 170 python3 benchmarks/cifar_epoch.py --device cuda --workers 8 2>&1 | tee "$out/cifar_epoch.txt"
