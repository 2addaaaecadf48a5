#!/usr/bin/env bash
# One prepared GPU session (device tool): autoencoder throughput, 7x7 ConvNeXt snapshots,
# and the full init benchmark. Usage on the GPU machine, from the repo root:
#   KERNELATLAS_DATA_DIR=.devdata bash benchmarks/gpu_run.sh OUTDIR
# Each step has its own time limit so a slow one cannot starve the rest; every step's
# results are written as it goes. The limits below fit one 10-minute device call and were
# too short in our session: the full bench-init needs about 10-12 minutes on an H200
# (split it by --arch over two calls), the ConvNeXt snapshots to step 5000 over 2 minutes.
# The results we got are in docs/benchmarks/ (bench-init-gpu-*, autoencoder_cuda.json,
# autoencoder_convnext.json); benchmarks/summarize_bench_init.py summarises a cut run.
set -u
OUT=${1:?output folder}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 KERNELATLAS_DATA_DIR=${KERNELATLAS_DATA_DIR:-.devdata}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" | tee -a "$OUT/gpu.txt"
step() { local limit=$1; shift; echo "== $(date +%T) $*"; timeout "$limit" "$@"; echo "== rc=$?"; }
step 70 python3 benchmarks/autoencoder.py --device cuda --n 1000000 --epochs 3
step ${AE7_LIMIT:-150} python3 benchmarks/autoencoder_convnext.py --device cuda --steps 0,200,1000 --ae-epochs 20
step ${BENCH_LIMIT:-300} python3 -m kernelatlas bench-init --full --device cuda --data-dir "$KERNELATLAS_DATA_DIR" --out "$OUT/bench-init-full"
cp docs/benchmarks/autoencoder_cuda.json docs/benchmarks/autoencoder_convnext.json "$OUT/" 2>/dev/null
ls -la "$OUT" "$OUT/bench-init-full" 2>/dev/null
