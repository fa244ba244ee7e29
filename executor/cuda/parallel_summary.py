#!/usr/bin/env python3
"""The parallel trainer's GPU runs in executor/cuda/gpu_test.sh, summarised.

  parallel_summary.py losses CUDA_REPORT CPU_REPORT NAME   each step's loss, CUDA (bf16) against the
      CPU reference (fp32) of the same plan, seed and data: passes when every step is within
      REL_TOL relative (bf16 keeps 8 bits of mantissa: 2^-8 = 0.4% per rounding; a few steps of
      a 4-layer model through bf16 GEMMs, attention and norms stay well inside 2%).
  parallel_summary.py emulated REPORT PLAN NAME   an emulated rank's measured compute per
      micro-batch (forward, backward, recompute) against the cost model's for its stage.
Each prints one line and one JSON line (to stdout) for $OUT/parallel.jsonl.
"""
import json
import sys

REL_TOL = 0.02


def losses(cuda_path, cpu_path, name):
    cuda = json.load(open(cuda_path))["losses"]
    cpu = json.load(open(cpu_path))["losses"]
    cuda_rep = json.load(open(cuda_path))
    worst = max(abs(a - b) / abs(b) for a, b in zip(cuda, cpu))
    ok = len(cuda) == len(cpu) and worst <= REL_TOL
    staging = cuda_rep.get("shared_gpu_staging", {})
    print(f"{name}: {len(cuda)} steps, loss cuda {cuda[0]:.5f} -> {cuda[-1]:.5f}, cpu {cpu[0]:.5f} -> {cpu[-1]:.5f}, "
          f"worst step {100 * worst:.3f}% (tolerance {100 * REL_TOL:.0f}%): {'ok' if ok else 'FAIL'}; "
          f"shared-GPU staging {staging.get('copy_s', 0):.4f} s per step over {staging.get('copied_bytes', 0)} bytes",
          file=sys.stderr)
    print(json.dumps({"run": name, "kind": "multi_rank_one_gpu", "cuda_losses": cuda, "cpu_losses": cpu,
                      "worst_rel": worst, "tolerance": REL_TOL, "ok": ok, "step_time_s": cuda_rep.get("step_time_s"),
                      "staging": staging}))
    return 0 if ok else 1


def stage_of(report):
    for s in report.get("stages", []):
        if s:  # stages no rank of this run measured are null
            return s
    return None


def emulated(report_path, plan_path, name):
    rep = json.load(open(report_path))
    plan = json.load(open(plan_path))
    s = stage_of(rep)
    idx = s.get("stage", 0)
    pred = plan["prediction"]["stages"][idx]
    flops = s.get("flops")
    keys = ("forward", "backward", "recompute")  # micro_batch_time_s, per micro-batch
    s = s["micro_batch_time_s"]
    pred = pred["micro_batch_time_s"]
    meas = sum(s.get(k, 0) for k in keys)
    want = sum(pred.get(k, 0) for k in keys)
    print(f"{name}: emulated rank {rep.get('emulated_rank')} (stage {idx}) compute per micro-batch "
          f"measured {1e3 * meas:.2f} ms, predicted {1e3 * want:.2f} ms (ratio {meas / want if want else float('nan'):.2f}); "
          + ", ".join(f"{k} {1e3 * s.get(k, 0):.2f}/{1e3 * pred.get(k, 0):.2f} ms" for k in keys)
          + f"; step {rep.get('step_time_s', 0):.2f} s", file=sys.stderr)
    print(json.dumps({"run": name, "kind": "emulated_rank", "stage": idx, "rank_flops": flops,
                      "measured": {k: s.get(k, 0) for k in keys}, "predicted": {k: pred.get(k, 0) for k in keys},
                      "measured_compute_per_micro_batch_s": meas, "predicted_compute_per_micro_batch_s": want,
                      "emulated_copy_s": rep.get("emulated_copy_s"), "step_time_s": rep.get("step_time_s")}))
    return 0


if __name__ == "__main__":
    mode = sys.argv[1]
    sys.exit(losses(*sys.argv[2:5]) if mode == "losses" else emulated(*sys.argv[2:5]))
