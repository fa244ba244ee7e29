#!/bin/sh
# Startup time of the `loom` binary: the median wall time of RUNS processes (default 20) of
#   loom --help
#   loom predict (GPT-3 175B on 1024 A100s, the README's configuration)
# with the median CPU time (user + sys) beside it, and what the binary maps before main runs (its
# NEEDED libraries; whether the CUDA backend module is beside it). Figures: BENCHMARKS.md,
# "Startup". Needs python3; with hyperfine installed (Debian package `hyperfine`) its median is
# printed too.
#   tests/bench_startup.sh [BUILD_DIR (default build)] [RUNS]
set -eu
BUILD=${1:-build}
RUNS=${2:-20}
LOOM=$BUILD/loom
[ -x "$LOOM" ] || { echo "bench_startup: $LOOM: no such executable (build the loom target first)" >&2; exit 2; }

# A bare --sp (sequence parallelism on) is read the same by every loom version, old and new.
PREDICT="predict --model gpt3-175b --cluster dgx-a100 --gpus 1024 --global-batch 1536 --tp 8 --pp 16 --zero 1 --schedule interleaved --vpp 2 --recompute selective --sp"

echo "binary: $LOOM"
echo "NEEDED: $(readelf -d "$LOOM" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')"
if [ -e "$BUILD/libloom_cuda.so" ]; then echo "CUDA backend module: $BUILD/libloom_cuda.so (loaded by execute --device cuda and calibrate)"
else echo "CUDA backend module: none beside the binary"; fi

# One untimed run (page cache warm), then RUNS timed ones; a failing run stops the benchmark.
python3 - "$RUNS" "$LOOM --help" "$LOOM $PREDICT" <<'PY'
import resource, statistics, subprocess, sys, time
runs = int(sys.argv[1])
print(f"median of {runs} runs (wall ms / CPU ms, user + sys):")
for cmd in sys.argv[2:]:
    argv = cmd.split()
    wall, cpu = [], []
    for i in range(runs + 1):
        r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        p = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        t1 = time.perf_counter()
        r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        if p.returncode != 0:
            sys.exit(f"bench_startup: exit {p.returncode}: {cmd}")
        if i > 0:
            wall.append(1e3 * (t1 - t0))
            cpu.append(1e3 * ((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)))
    name = "predict (GPT-3 175B, 1024 GPUs)" if argv[1] == "predict" else " ".join(argv[1:])
    print(f"  loom {name:<32} {statistics.median(wall):8.1f} / {statistics.median(cpu):6.1f}")
PY
if command -v hyperfine >/dev/null 2>&1; then
  tmp=$(mktemp)
  trap 'rm -f "$tmp"' EXIT
  for cmd in "$LOOM --help" "$LOOM $PREDICT"; do
    hyperfine -N --warmup 1 --runs "$RUNS" --export-json "$tmp" "$cmd" >/dev/null 2>&1
    python3 -c 'import json, sys; r = json.load(open(sys.argv[1]))["results"][0]; print("  hyperfine median %.1f ms (min %.1f): %s" % (1e3 * r["median"], 1e3 * r["min"], sys.argv[2]))' "$tmp" "${cmd#"$BUILD"/}"
  done
fi
