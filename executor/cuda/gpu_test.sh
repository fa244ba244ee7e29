#!/usr/bin/env bash
# One command on a machine with an NVIDIA GPU (sm_80+; timings in BENCHMARKS.md are an H100):
# build with CUDA, run the GPU tests (ctest -L gpu: the kernels, and the device comms under
# mpirun -np 2), train GPT-2 124M (micro-batch 32) and 1.5B (micro-batch 8) plans with loom,
# run the PyTorch baseline (torch.compile and eager) and a bf16 GEMM ceiling in the same run,
# print a table, and append one JSON line per configuration to traces/bench/h100-<date>.jsonl.
# Then the parallel trainer on the CUDA backend (`loom execute --device cuda`): three plans of a
# small Llama with head size 128 (executor/cuda/plans/llama-hs128-*.json: dp2 x tp2 ZeRO-1 SP,
# tp2 x pp2 interleaved, dp4 ZeRO-3) as 4 ranks sharing this GPU (the staged comm), each step's
# loss against the CPU reference's (fp32) within 2%; emulated ranks (--emulate-rank) of GPT-3
# 175B (the README's dgx-a100 plan) and Llama 3 70B (tp 8, pp 4), measured against predicted
# compute per micro-batch; with 2 or more GPUs the same 4-rank plans over NCCL. Results in
# $OUT/parallel.jsonl and $OUT/parallel.txt.
#   make gpu-test            or   executor/cuda/gpu_test.sh
# Environment: OUT (results; default $BUILD/gpu-test), BUILD (default build-gpu), STEPS (20),
#   RUNS (loom runs, default "124M:32 1558M:8 1100M:8": 1100M is TinyLlama 1.1B, the Llama family), TORCH_RUNS (default 124M:32:1,1558M:8:1,124M:32:0),
#   SKIP_TESTS=1, SKIP_TORCH=1, NO_TRACE=1 (do not append to traces/bench), USE_SAVED_PLANS=1
#   (executor/cuda/plans/ instead of building `loom` to make them), SKIP_PARALLEL=1,
#   MR_STEPS (multi-rank steps, default 3).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build-gpu}
OUT=${OUT:-$PWD/$BUILD/gpu-test}
STEPS=${STEPS:-20}
RUNS=${RUNS:-"124M:32 1558M:8 1100M:8"}
TORCH_RUNS=${TORCH_RUNS:-124M:32:1,1558M:8:1,124M:32:0}
mkdir -p "$OUT"

. executor/cuda/build_env.sh  # carried .debs and nvcc
echo "== configure and build ($BUILD)"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_COMPILER="$NVCC" \
  -DCMAKE_CUDA_ARCHITECTURES=90 >"$OUT/cmake.log" 2>&1 || { tail -40 "$OUT/cmake.log"; exit 1; }
cmake --build "$BUILD" -j "$(nproc)" --target loom_cuda_train loom_gpu_tests loom_device_comm_test loom_cuda loom_cpu >"$OUT/build.log" 2>&1 \
  || { grep -E "error|FAILED" "$OUT/build.log" | head -40; exit 1; }
# The planner makes the plans; if `loom` does not build here, the plans saved beside this script
# (the same `loom predict ... -o` output) are used.
have_loom=0
if [ "${USE_SAVED_PLANS:-0}" != 1 ]; then
  have_loom=1
  cmake --build "$BUILD" -j "$(nproc)" --target loom loom_cpu >"$OUT/build-loom.log" 2>&1 || have_loom=0
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv,noheader | tee "$OUT/gpu.txt"

status=0
if [ "${SKIP_TESTS:-0}" != 1 ]; then
  echo "== GPU kernel tests"
  (cd "$BUILD" && ctest -L gpu --output-on-failure) >"$OUT/tests.log" 2>&1 || status=1
  tail -25 "$OUT/tests.log"
  "$BUILD/tests/gpu/loom_gpu_tests" "[.bench]" 2>&1 | grep '^bench' | tee "$OUT/bench.txt" || true
fi

echo "== loom training runs"
zoo_name() { case $1 in 124M) echo gpt2-124m ;; 350M) echo gpt2-350m ;; 774M) echo gpt2-774m ;; 1558M) echo gpt2-1.5b ;; 1100M) echo tinyllama-1.1b ;; esac; }
for r in $RUNS; do
  m=${r%%:*} b=${r##*:}
  if [ $have_loom = 1 ]; then
    "$BUILD/loom" predict --model "$(zoo_name "$m")" --cluster h100-sxm --gpus 1 --tp 1 --pp 1 \
      --micro-batch "$b" --global-batch "$b" --seq 1024 --cross-entropy fused -o "$OUT/plan-$m.json" >/dev/null
  else
    cp "executor/cuda/plans/$(zoo_name "$m")-b$b.json" "$OUT/plan-$m.json"
  fi
  "$BUILD/loom_cuda_train" "$OUT/plan-$m.json" --steps "$STEPS" --report "$OUT/loom-$m.json" --trace "$OUT/trace-$m.json" \
    >"$OUT/train-$m.log" 2>&1 || status=1
  grep -E "step +(1|$STEPS)/|tokens/s, |loom_cuda_train" "$OUT/train-$m.log" | tail -4
done

if [ "${SKIP_TORCH:-0}" != 1 ]; then
  echo "== bf16 GEMM ceiling and PyTorch baseline"
  python3 executor/cuda/gemm_ceiling.py | tee "$OUT/gemm.json" || status=1
  PYTHONUNBUFFERED=1 python3 executor/cuda/torch_gpt2_bench.py --runs "$TORCH_RUNS" --steps "$STEPS" \
    2>"$OUT/torch.err" | tee "$OUT/torch.jsonl" || status=1
fi

if [ "${SKIP_PARALLEL:-0}" != 1 ]; then
  executor/cuda/gpu_test_parallel.sh "$BUILD" "$OUT" || status=1
fi

python3 executor/cuda/bench_summary.py "$OUT"
if [ "${NO_TRACE:-0}" != 1 ]; then
  mkdir -p traces/bench
  cat "$OUT"/h100-*.jsonl >>"traces/bench/$(basename "$OUT"/h100-*.jsonl)"
fi
exit $status
