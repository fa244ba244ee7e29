#!/usr/bin/env python3
"""Analytical step against the event simulator's, over the candidates `loom plan` ranks.

For each job, `loom plan --top K --refine K --json` prices the K best configurations with both
models (the planner ranks by the simulator); this prints, per job, how many of the best 3, 10
and K agree within 3% and the worst signed difference (simulated / analytical - 1). Every row
is counted; none is dropped.

    python3 tests/bench_agreement.py build/loom [K]
"""
import json
import subprocess
import sys

JOBS = [  # model, cluster, GPUs, global batch
    ("gpt3-175b", "dgx-a100", 1024, 1536),
    ("gpt2-350m", "dgx-a100", 16, 64),
    ("llama3-8b", "dgx-h100", 64, 512),
    ("llama3-70b", "dgx-h100", 1024, 1024),
    ("llama3-405b", "dgx-h100", 16384, 2048),
]


def main():
    loom = sys.argv[1] if len(sys.argv) > 1 else "build/loom"
    k = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    print(f"{'job':<34} {'within 3%: best 3':>18} {'best 10':>8} {'best ' + str(k):>9} {'worst %':>8}")
    for model, cluster, gpus, batch in JOBS:
        out = subprocess.run([loom, "plan", "--model", model, "--cluster", cluster, "--gpus", str(gpus),
                              "--global-batch", str(batch), "--top", str(k), "--refine", str(k), "--json"],
                             check=True, capture_output=True, text=True).stdout
        rows = json.loads(out)["top"]
        err = [100 * (r["simulated_step_time_s"] / r["step_time_s"] - 1) for r in rows]
        def within(n):
            return f"{sum(abs(e) <= 3 for e in err[:n])}/{len(err[:n])}"
        worst = max(err, key=abs)
        print(f"{model + ' ' + cluster + ' x' + str(gpus):<34} {within(3):>18} {within(10):>8} {within(k):>9} "
              f"{worst:>+8.1f}")


if __name__ == "__main__":
    main()
