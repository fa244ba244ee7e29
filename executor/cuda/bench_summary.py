# Reads the results of executor/cuda/gpu_test.sh (loom-*.json reports, torch.jsonl, gemm.json)
# from OUT, prints the comparison table, and writes one JSON line per measured configuration
# (system loom | pytorch-compile | pytorch-eager) to OUT/<gpu>-<date>.jsonl in the fields of
# traces/bench/*.jsonl. MFU for every system uses the PyTorch bench's convention so the numbers
# compare: (6 N + 6 L h T) FLOPs per token over 989 TFLOP/s (llm.c's H100 SXM bf16 peak), N
# counting the padded vocabulary (50304) as the bench's model does.
import datetime, glob, json, os, sys

SIZES = {"124M": (12, 12, 768), "1558M": (48, 25, 1600)}
V_PAD, T = 50304, 1024


def flops_per_token(model):
    L, _, h = SIZES[model]
    n = V_PAD * h + T * h + L * (12 * h * h + 13 * h) + 2 * h
    return 6 * n + 6 * L * h * T


def main(out):
    date = datetime.date.today().isoformat()
    gpu = open(os.path.join(out, "gpu.txt")).read().split(",")[0].strip() if os.path.exists(os.path.join(out, "gpu.txt")) else "unknown"
    rows = []
    for path in sorted(glob.glob(os.path.join(out, "loom-*.json"))):
        r = json.load(open(path))
        model = os.path.basename(path)[5:-5]
        tok = r["tokens_per_s"]
        rows.append(dict(system="loom", model=model, micro_batch=r["micro_batch"], seq=r["seq"],
                         tokens_per_s=round(tok), step_s=round(r["step_time_s"], 4),
                         # models the PyTorch bench does not run (TinyLlama): loom's own MFU
                         mfu=round(flops_per_token(model) * tok / 989e12 if model in SIZES else r["mfu"], 4),
                         peak_mem_gib=round(r["allocated_bytes"] / 2**30, 2), gpu=r["device"],
                         loss_first=round(r["losses"][0], 3), loss_last=round(r["losses"][-1], 3)))
    tpath = os.path.join(out, "torch.jsonl")
    if os.path.exists(tpath):
        for line in open(tpath):
            line = line.strip()
            if not line.startswith("{"):
                continue
            r = json.loads(line)
            if "error" in r:
                print("pytorch error:", r)
                continue
            rows.append(dict(system=r["system"], model=r["model"], micro_batch=r["B"], seq=r["T"],
                             tokens_per_s=r["tokens_per_s"], step_s=r["step_s"], mfu=r["mfu_989"],
                             peak_mem_gib=r["peak_mem_gib"], gpu=gpu, loss_last=r["loss"]))
    gemm = None
    gpath = os.path.join(out, "gemm.json")
    if os.path.exists(gpath):
        gemm = json.loads(open(gpath).read().strip().splitlines()[-1])
    cmd = "make gpu-test (executor/cuda/gpu_test.sh)"
    with open(os.path.join(out, f"h100-{date}.jsonl"), "w") as f:
        for r in rows:
            f.write(json.dumps(dict(r, date=date, command=cmd)) + "\n")
    print(f"\n{'system':<16} {'model':<6} {'B':>3} {'tokens/s':>10} {'step s':>8} {'MFU':>6} {'mem GiB':>8} {'vs compile':>10}")
    for r in rows:
        ref = [x for x in rows if x["system"] == "pytorch-compile" and x["model"] == r["model"]]
        ratio = f"{r['tokens_per_s'] / ref[0]['tokens_per_s']:.3f}" if ref else "-"
        print(f"{r['system']:<16} {r['model']:<6} {r['micro_batch']:>3} {r['tokens_per_s']:>10} "
              f"{r['step_s']:>8.4f} {100 * r['mfu']:>5.1f}% {r['peak_mem_gib']:>8.2f} {ratio:>10}")
    if gemm:
        print(f"bf16 GEMM ceiling (8192^3, cuBLAS via torch): {gemm['tflops']} TFLOP/s")


if __name__ == "__main__":
    main(sys.argv[1])
