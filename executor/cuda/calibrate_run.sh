#!/usr/bin/env bash
# One device call: build the CUDA backend, run `loom calibrate` (loom_calibrate: the same code
# without MPI) and then every end-to-end configuration under traces/h100/*/plan.json with
# `loom execute --device cuda --report` (loom_cuda_train: the same execute_cuda_command).
# The GEMM model (sim/gemm_model.hpp) is then fitted to the GEMMs measured, against the zoo
# cluster of the GPU found (h200-sxm on an H200, h100-sxm on an H100 SXM; CLUSTER names another;
# none: not fitted), and written into the profile. Results go to $OUT: profile.json,
# profile_summary.txt (executor/cuda/profile_summary.py: the models, FP8 against bf16, attention),
# attention_curve.json (executor/cuda/attention_curve_bench.py: the engines' attention kernels by
# head size and length, forward and backward, as efficiency.attention_curve takes them),
# results.tgz (traces/h100/<name>/measured.json + logs), log.
#   OUT=/tmp/cal executor/cuda/calibrate_run.sh        STEPS (10) BUILD (build-gpu) CLUSTER
set -uo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build-gpu}
OUT=${OUT:-$PWD/$BUILD/calibrate}
STEPS=${STEPS:-10}
mkdir -p "$OUT"
. executor/cuda/build_env.sh  # carried .debs and nvcc
echo "== build ($(date +%T))"
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_COMPILER="$NVCC" \
  -DCMAKE_CUDA_ARCHITECTURES=90 >"$OUT/cmake.log" 2>&1 || { tail -40 "$OUT/cmake.log"; exit 1; }
cmake --build "$BUILD" -j "$(nproc)" --target loom loom_cuda_train loom_calibrate >"$OUT/build.log" 2>&1 \
  || { grep -E "error|FAILED" "$OUT/build.log" | head -40; exit 1; }
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv,noheader | tee "$OUT/gpu.txt"
echo "== calibrate ($(date +%T))"
"$BUILD/loom_calibrate" --out "$OUT/profile.json" 2>"$OUT/calibrate.log"; echo "calibrate rc $?"
tail -6 "$OUT/calibrate.log"
if [ -z "${CLUSTER:-}" ]; then
  case "$(cut -d, -f1 "$OUT/gpu.txt")" in
    *H200*) CLUSTER=h200-sxm ;;
    *"H100 80GB HBM3"*) CLUSTER=h100-sxm ;;
  esac
fi
if [ -n "${CLUSTER:-}" ]; then
  "$BUILD/loom" calibrate --fit-gemm "$OUT/profile.json" --cluster "$CLUSTER" --out "$OUT/profile.json"
  echo "gemm model fit ($CLUSTER) rc $?"
else
  echo "gemm model not fitted: no zoo cluster for $(cut -d, -f1 "$OUT/gpu.txt"); set CLUSTER= to one whose gpu is this GPU"
fi
echo "== attention kernels the engines run ($(date +%T))"
# PyTorch SDPA's cuDNN and FlashAttention-2 kernels, forward and backward timed apart: what a
# cluster file's efficiency.attention_curve takes (loom calibrate times loom's own kernel).
python3 executor/cuda/attention_curve_bench.py --out "$OUT/attention_curve.json" 2>"$OUT/attention_curve.log"
echo "attention curve rc $?"; grep -E "d 128 s +(1024|8192)" "$OUT/attention_curve.log"
python3 executor/cuda/profile_summary.py "$OUT/profile.json" > "$OUT/profile_summary.txt" 2>&1
head -4 "$OUT/profile_summary.txt"; grep "^median FP8" "$OUT/profile_summary.txt"
echo "== end-to-end ($(date +%T))"
mkdir -p "$OUT/h100"
for d in traces/h100/*/; do
  n=$(basename "$d")
  mkdir -p "$OUT/h100/$n"
  "$BUILD/loom_cuda_train" "$d/plan.json" --steps "$STEPS" --report "$OUT/h100/$n/measured.json" \
    >"$OUT/h100/$n/stdout.log" 2>"$OUT/h100/$n/train.log"
  echo "$n rc $? $(cat "$OUT/h100/$n/stdout.log")"
done
echo "== done ($(date +%T))"
(cd "$OUT" && tar czf results.tgz h100 calibrate.log build.log gpu.txt profile_summary.txt attention_curve.json \
  attention_curve.log)
