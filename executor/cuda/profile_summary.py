# What a profile `loom calibrate` wrote says about its GPU, as a table for BENCHMARKS.md: the
# fitted GEMM models (bf16 and FP8), FP8 against bf16 at every shape measured in both (the
# planner's linear layers), the attention kernel's TFLOP/s by head size and length, and the
# memory-bound kernels' bandwidth by kind against the plain elementwise sum's.
#   python3 executor/cuda/profile_summary.py build-gpu/calibrate/profile.json
import json, statistics, sys


def tflops(g):
    return 2.0 * g["m"] * g["n"] * g["k"] / g["seconds"] / 1e12


def model_line(name, m):
    return (f"{name}: mainloop efficiency {m['mainloop_efficiency']:.4f} of {m['peak_flops'] / 1e12:.1f} TFLOP/s, "
            f"tile overhead {m['tile_overhead_s'] * 1e6:.2f} us, memory efficiency {m['memory_efficiency']:.3f}, "
            f"launch {m['launch_s'] * 1e6:.2f} us; fit over {m['samples']} GEMMs: mean |error| "
            f"{100 * m['fit_mape']:.1f}%, worst {100 * m['fit_worst']:.1f}%")


def gemm_section(p):
    for key, name in (("gemm_model", "bf16 model"), ("gemm_model_fp8", "FP8 model")):
        print(model_line(name, p[key]) if key in p else f"{name}: not fitted")
    if not p.get("gemm_fp8"):
        print("FP8 GEMMs: not measured (no FP8 tensor cores, or --quick)")
        return
    bf16 = {(g["m"], g["n"], g["k"], g.get("accumulate_fp32", False)): g for g in p["gemm"]}
    rows = []
    for g in p["gemm_fp8"]:
        key = (g["m"], g["n"], g["k"], g.get("accumulate_fp32", False))
        if key in bf16:
            rows.append((key, tflops(bf16[key]), tflops(g)))
    print(f"\nFP8 against bf16 at the {len(rows)} shapes measured in both (M x N x K; wgrad: fp32 accumulated)")
    print(f"{'M':>7} {'N':>7} {'K':>7} {'kind':>5}  {'bf16 TF/s':>9}  {'FP8 TF/s':>9}  {'FP8/bf16':>8}")
    for (m, n, k, acc), b, f in sorted(rows, key=lambda r: 2.0 * r[0][0] * r[0][1] * r[0][2]):
        print(f"{m:7d} {n:7d} {k:7d} {'wgrad' if acc else '':>5}  {b:9.1f}  {f:9.1f}  {f / b:8.2f}")
    if rows:
        print(f"median FP8/bf16 {statistics.median(f / b for _, b, f in rows):.2f}; "
              f"best FP8 {max(f for _, _, f in rows):.1f} TFLOP/s")


def attention_section(p):
    print("\nattention (causal; TFLOP/s of the forward's 2 bh s^2 d, backward 2.5x that)")
    print(f"{'bh':>5} {'seq':>7} {'d':>4}  {'fwd TF/s':>8}  {'bwd TF/s':>8}")
    for a in p["attention"]:
        fl = 2.0 * a["bh"] * a["seq"] ** 2 * a["head_dim"]
        print(f"{a['bh']:5d} {a['seq']:7d} {a['head_dim']:4d}  {fl / a['fwd_s'] / 1e12:8.1f}  "
              f"{2.5 * fl / a['bwd_s'] / 1e12:8.1f}")


def bandwidth_at(curve, size):
    """The curve's bytes/s at the point nearest `size` (log distance)."""
    import math
    return min(curve, key=lambda b: abs(math.log(b["bytes"] / size)))


def memory_section(p):
    plain = p["memory_bound"]
    kinds = p.get("memory_by_kind", [])
    print("\nmemory-bound kernels: GB/s (bytes as loom's cost model counts them) by size; "
          "'sum' is the plain elementwise a + b")
    if not kinds:
        print("by kind: not measured (a profile from before memory_by_kind)")
        return
    sizes = sorted({b["bytes"] for b in kinds})
    cols = [sizes[0], sizes[len(sizes) // 2], sizes[-1]]
    print(f"{'kind':>13} {'pass':>8}  " + "  ".join(f"{c / 1e6:>9.1f}MB" for c in cols))
    print(f"{'sum':>13} {'':>8}  " + "  ".join(f"{bandwidth_at(plain, c)['bytes_per_s'] / 1e9:>11.0f}" for c in cols))
    curves = {}
    for b in kinds:
        curves.setdefault((b["kind"], b["pass"]), []).append(b)
    for (kind, pas), curve in curves.items():
        print(f"{kind:>13} {pas:>8}  " + "  ".join(f"{bandwidth_at(curve, c)['bytes_per_s'] / 1e9:>11.0f}" for c in cols))


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: profile_summary.py PROFILE.json")
    with open(sys.argv[1]) as f:
        p = json.load(f)
    print(f"{p['name']}: {p['device']}")
    gemm_section(p)
    attention_section(p)
    memory_section(p)


if __name__ == "__main__":
    main()
