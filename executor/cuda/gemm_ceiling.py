# The bf16 GEMM ceiling of this GPU, measured the way METHOD.md asks: random data (not zeros),
# CUDA events, warm-up, median of repeats, inputs rotated so the 50 MB L2 holds none of them.
# Prints one JSON line: the TFLOP/s of an 8192^3 bf16 matrix product through cuBLAS (PyTorch).
import json, statistics, torch

n, reps, sets = 8192, 30, 3
a = [torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(sets)]
b = [torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(sets)]
for i in range(5):
    torch.mm(a[i % sets], b[i % sets])
torch.cuda.synchronize()
times = []
for i in range(reps):
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    torch.mm(a[i % sets], b[i % sets])
    e1.record()
    e1.synchronize()
    times.append(e0.elapsed_time(e1) / 1e3)
t = statistics.median(times)
print(json.dumps(dict(gemm="bf16 8192x8192x8192 torch.mm", tflops=round(2 * n**3 / t / 1e12, 1),
                      median_s=round(t, 6), gpu=torch.cuda.get_device_name())))
