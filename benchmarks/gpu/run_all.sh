#!/usr/bin/env bash
# One device call: GPU decode bench, GPU tests, DeepSpeed (install, '0a' reproduction, JIT build, tests).
#   bash benchmarks/gpu/run_all.sh [budget_s]      (writes into $OUT, default ./gpu-out)
set -u
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
BUDGET=${1:-560}; T0=$SECONDS
left() { echo $(( BUDGET - (SECONDS - T0) )); }
{
  echo "TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST-<unset>}"; nvidia-smi -L
  nvidia-smi --query-gpu=name,driver_version,memory.total,uuid --format=csv,noheader
  nproc
} > "$OUT/env.txt" 2>&1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(0))" >> "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

echo "== bench ($(left)s left)"
timeout 200 python3 benchmarks/gpu/decode_bench.py --out "$OUT/bench.json" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"; tail -20 "$OUT/bench.log"

if [ "${SKIP_DS:-0}" != 1 ]; then
( # DeepSpeed in the background: install, reproduce the '0a' failure, then JIT-build with the fixed arch list
  set -x
  python3 -m pip install -q --no-build-isolation --no-deps --no-cache-dir --target /tmp/site .whl/deepspeed-0.19.8.tar.gz
  python3 -c "import deepspeed; print('deepspeed', deepspeed.__version__)"
  python3 -c "from deepspeed.ops.op_builder import InferenceBuilder; InferenceBuilder().load()" 2>&1 | tail -5
  FIXED=$(python3 -c "import os; from lmjupyter.handlers.parallel.deepspeed import deepspeed_arch_list as f; print(f(os.environ.get('TORCH_CUDA_ARCH_LIST')) or os.environ.get('TORCH_CUDA_ARCH_LIST',''))")
  echo "fixed arch list: $FIXED"
  time TORCH_CUDA_ARCH_LIST="$FIXED" python3 -c "from deepspeed.ops.op_builder import InferenceBuilder; InferenceBuilder().load(); print('transformer_inference op built')" 2>&1 | tail -15
) > "$OUT/ds_build.log" 2>&1 &
DSPID=$!
fi

echo "== gpu tests ($(left)s left)"
timeout 170 python3 -m pytest tests/gpu/test_graphs.py tests/gpu/test_serve_gpu.py -q -rs -p no:cacheprovider > "$OUT/gpu_tests.log" 2>&1
echo "gpu tests rc=$?"; tail -25 "$OUT/gpu_tests.log"
timeout 60 python3 -m pytest tests/parallel/test_single.py -k gpu -q -rs -p no:cacheprovider > /tmp/parallel_gpu.log 2>&1
echo "parallel gpu rc=$?"; tail -4 /tmp/parallel_gpu.log; cat /tmp/parallel_gpu.log >> "$OUT/gpu_tests.log"

if [ "${SKIP_DS:-0}" != 1 ]; then
  echo "== deepspeed ($(left)s left)"
  L=$(left); [ "$L" -gt 20 ] && timeout $((L - 10)) bash -c "while kill -0 $DSPID 2>/dev/null; do sleep 2; done"
  cat "$OUT/ds_build.log" | tail -30
  L=$(left)
  [ "$L" -gt 30 ] && timeout $((L - 5)) python3 -m pytest tests/gpu/test_deepspeed.py -q -rs -p no:cacheprovider > "$OUT/ds_tests.log" 2>&1
  echo "ds tests rc=$?"; tail -30 "$OUT/ds_tests.log"
fi
L=$(left)
if [ "${SKIP_PROBE:-0}" != 1 ] && [ "$L" -gt 100 ]; then
  echo "== compile probe ($L s left)"
  timeout $((L - 10)) python3 benchmarks/gpu/compile_probe.py > "$OUT/probe.log" 2>&1
  echo "probe rc=$?"; grep -v Warning "$OUT/probe.log" | tail -8
fi
echo "done in $((SECONDS - T0))s"
