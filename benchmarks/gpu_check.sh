#!/usr/bin/env bash
# The GPU checks, as one short script for a lent GPU machine (issue 15; issues 12 and 16 use it too).
# Run from the repository root with the environment built (`make env`):
#     bash benchmarks/gpu_check.sh [OUT_DIR]
# 1. the CUDA tests (they skip cleanly elsewhere), 2. with two or more GPUs, a two-process
#    torchrun extraction compared with a one-process one on the same GPU type, 3. extraction
#    throughput on the GPU (bench_extract.py, plain float32 and bf16 autocast).
# Every figure goes to OUT_DIR (default: $OUT, else ./gpu_check) for the issue note.
set -euo pipefail
PY=${PY:-.venv/bin/python}
OUT_DIR=${1:-${OUT:-gpu_check}}
mkdir -p "$OUT_DIR"
exec > >(tee "$OUT_DIR/gpu_check.log") 2>&1

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'gpus', torch.cuda.device_count())"
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
if [ "$GPUS" -lt 1 ]; then echo "no CUDA device: nothing to check"; exit 1; fi

echo "== CUDA tests"
"$PY" -m pytest -q -p no:cacheprovider tests/extract/test_scale.py tests/extract/test_distributed.py

if [ "$GPUS" -ge 2 ]; then
    echo "== two processes vs one on this GPU type"
    tmp=$(mktemp -d)
    "$PY" -m oodcache -q extract --arch digits_resnet --benchmark digits --out "$tmp/one/cache.h5" --device cuda
    cp "$tmp/one/weights.pt" "$tmp/weights.pt"
    "$PY" -m torch.distributed.run --standalone --nproc_per_node=2 -m oodcache -q extract \
        --arch digits_resnet --benchmark digits --out "$tmp/two/cache.h5" --device cuda \
        --weights "$tmp/weights.pt"
    "$PY" - "$tmp/one/cache.h5" "$tmp/two/cache.h5" <<'PYEOF'
import sys
from oodcache.cache.shards import differences
diff = differences(sys.argv[1], sys.argv[2])
print("differences, 2 processes vs 1 on CUDA:", diff or "none (bit for bit)")
PYEOF
    rm -rf "$tmp"
fi

echo "== extraction throughput (bench_extract.py)"
for amp in off bf16; do  # default extraction (no ODIN) vs the bare loop, ResNet-50 at 224
    "$PY" benchmarks/bench_extract.py --device cuda --models resnet50 resnet18 --batch-size 256 \
        --batches 40 --input-size 224 --autocast "$amp"
done
echo "== done: $OUT_DIR/gpu_check.log"
