#!/usr/bin/env bash
# One device call for the generation engine (issues 11 and 18): the bench, then the GPU tests.
#   SHAPE=1.1b SECTIONS=roofline,hf,inproc,profile,server bash benchmarks/gpu/run_generation.sh
#   SSE_S=150 STARTUP_S=200 BENCH_S=0 TESTS_S=0 bash benchmarks/gpu/run_generation.sh   # issue 12's SSE
#       figure and issue 14's GPU start-up breakdown only (sse.py needs httpx: carry its wheel too)
#   GEMV_S=170 BENCH_S=0 TESTS_S=0 bash benchmarks/gpu/run_generation.sh   # the Triton GEMV sweep (issue 18)
# Carry .whl (tornado, pydantic and its parts: the image lacks them). Writes into $OUT.
set -u
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-$PWD/gpu-out}; mkdir -p "$OUT"
SHAPE=${SHAPE:-1.1b}; SECTIONS=${SECTIONS:-roofline,hf,inproc,profile,server}; TAG=${TAG:-$SHAPE}
BENCH_S=${BENCH_S:-360}; TESTS_S=${TESTS_S:-150}; EXTRA=${EXTRA:-}; SSE_S=${SSE_S:-0}; STARTUP_S=${STARTUP_S:-0}
GEMV_S=${GEMV_S:-0}; TESTS=${TESTS:-tests/gpu}; REAL_SHAPES=${REAL_SHAPES:-1}
T0=$SECONDS
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"; } \
  > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
if [ "$GEMV_S" -gt 0 ]; then   # issue 18: the decode matmuls, cuBLAS vs the Triton GEMV, per weight shape
  echo "== gemv"
  timeout "$GEMV_S" python3 benchmarks/gpu/gemv_bench.py --quick --out "$OUT/gemv.json" > "$OUT/gemv.log" 2>&1
  echo "gemv rc=$? after $((SECONDS - T0))s"; tail -14 "$OUT/gemv.log"
fi
if [ "$BENCH_S" -gt 0 ]; then
  echo "== bench $SHAPE: $SECTIONS"
  timeout "$BENCH_S" python3 benchmarks/gpu/generation_bench.py --shape "$SHAPE" --sections "$SECTIONS" \
    --root /tmp/genbench $EXTRA --out "$OUT/gen-$TAG.json" > "$OUT/gen-$TAG.log" 2>&1
  echo "bench rc=$? after $((SECONDS - T0))s"; grep -v "Loading\|Writing" "$OUT/gen-$TAG.log" | grep -v "^ " | tail -25
fi
if [ "$SSE_S" -gt 0 ]; then   # issue 12: the OpenAI SSE stream against the native one, 1.1B shape
  echo "== sse vs native"
  timeout "$SSE_S" python3 benchmarks/sse.py --device gpu --shape 1.1b --dtype bfloat16 --duration 10 --reps 3 \
    --out "$OUT/sse-gpu.json" > "$OUT/sse-gpu.log" 2>&1
  echo "sse rc=$? after $((SECONDS - T0))s"; tail -12 "$OUT/sse-gpu.log"
fi
if [ "$STARTUP_S" -gt 0 ]; then   # issue 14: deploy -> ready -> first token, and where the time goes
  echo "== start-up"
  timeout "$STARTUP_S" python3 benchmarks/gpu/startup_bench.py --reps 2 --out "$OUT/startup-gpu.json" \
    > "$OUT/startup-gpu.log" 2>&1
  echo "startup rc=$? after $((SECONDS - T0))s"; tail -20 "$OUT/startup-gpu.log"
fi
if [ "$TESTS_S" -gt 0 ]; then
  echo "== gpu tests"
  T1=$SECONDS
  timeout "$TESTS_S" python3 -m pytest $TESTS -q -rs -p no:cacheprovider -k "not deepspeed and not real_shapes" \
    > "$OUT/gpu_tests.log" 2>&1
  echo "gpu tests rc=$? after $((SECONDS - T0))s"; grep -v "Loading\|Writing" "$OUT/gpu_tests.log" | tail -30
  LEFT=$(( TESTS_S - (SECONDS - T1) ))
  if [ "$REAL_SHAPES" = 1 ] && [ "$LEFT" -gt 40 ]; then   # the fp32 1.1B/8B comparison, on the shapes the bench built
    LMJ_SHAPES_DIR=/tmp/genbench timeout "$LEFT" python3 -m pytest tests/gpu/test_generation_gpu.py -q -rs \
      -p no:cacheprovider -k real_shapes > "$OUT/gpu_tests_shapes.log" 2>&1
    echo "real-shape tests rc=$?"; tail -8 "$OUT/gpu_tests_shapes.log"
  fi
fi
echo "done in $((SECONDS - T0))s"
