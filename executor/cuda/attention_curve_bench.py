# The fused attention kernels the engines run, timed on this GPU as a cluster file's
# efficiency.attention_curve (sim/attention_curve.hpp): PyTorch's scaled_dot_product_attention
# with each backend it offers here (cuDNN: what Transformer Engine and llm.c run on Hopper;
# FlashAttention-2: what PyTorch's default and torchtitan run), causal, bf16, head sizes 64 and 128,
# 512 to 32k tokens, forward and backward timed apart. Shapes and FLOPs as FlashAttention's own
# benchmark (Dao-AILab/flash-attention benchmarks/benchmark_flash_attention.py): hidden 2048
# (32 heads of 64 or 16 of 128), a batch of TOKENS / seqlen sequences, causal forward FLOPs
# 4 b s^2 h d / 2 and the backward 2.5x that, so the points are in loom's count.
#
#   python3 executor/cuda/attention_curve_bench.py --out attention_curve.json [--tokens 32768]
#
# Writes {"<backend>": {"kernel", "points": [{head_dim, seq, forward_flops_per_s,
# backward_flops_per_s}], "source"}, ...}: each value is what a cluster file's
# "efficiency": {"attention_curve": ...} takes. Times: CUDA events around REPEATS calls after
# WARMUP, the median of ROUNDS such rounds.
import argparse
import datetime
import json
import statistics
import sys

HEAD_DIMS = (64, 128)
SEQS = (512, 1024, 2048, 4096, 8192, 16384, 32768)
HIDDEN = 2048
WARMUP, REPEATS, ROUNDS = 3, 10, 5


def causal_forward_flops(batch, heads, seq, head_dim):
    return 4 * batch * heads * seq * seq * head_dim / 2


def timed_s(torch, fn):
    """Median over ROUNDS of the mean time of REPEATS calls of fn, in seconds."""
    for _ in range(WARMUP):
        fn()
    rounds = []
    for _ in range(ROUNDS):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(REPEATS):
            fn()
        end.record()
        torch.cuda.synchronize()
        rounds.append(start.elapsed_time(end) / 1e3 / REPEATS)
    return statistics.median(rounds)


def one_shape(torch, sdpa, seq, head_dim, tokens):
    """(forward s, backward s, forward FLOPs) of one causal attention call."""
    heads = HIDDEN // head_dim
    batch = max(1, tokens // seq)
    shape = (batch, heads, seq, head_dim)
    q, k, v = (torch.randn(shape, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    out = sdpa(q, k, v, is_causal=True)
    grad = torch.randn_like(out)
    forward_s = timed_s(torch, lambda: sdpa(q, k, v, is_causal=True))

    def backward():
        o = sdpa(q, k, v, is_causal=True)
        torch.autograd.grad(o, (q, k, v), grad)

    # The backward alone: a forward and backward pair less the forward.
    backward_s = max(timed_s(torch, backward) - forward_s, 1e-9)
    return forward_s, backward_s, causal_forward_flops(batch, heads, seq, head_dim)


def curve(torch, backend, label, tokens, gpu):
    from torch.nn.attention import sdpa_kernel
    sdpa = torch.nn.functional.scaled_dot_product_attention
    points = []
    with sdpa_kernel(backend):
        for head_dim in HEAD_DIMS:
            for seq in SEQS:
                try:
                    fwd, bwd, flops = one_shape(torch, sdpa, seq, head_dim, tokens)
                except RuntimeError as e:  # the backend refuses the shape, or memory
                    print(f"{label} head_dim {head_dim} seq {seq}: skipped ({str(e).splitlines()[0]})", file=sys.stderr)
                    torch.cuda.empty_cache()
                    continue
                points.append({"head_dim": head_dim, "seq": seq, "forward_flops_per_s": flops / fwd,
                               "backward_flops_per_s": 2.5 * flops / bwd})
                print(f"{label:8s} d {head_dim:3d} s {seq:6d}: forward {flops / fwd / 1e12:6.1f} "
                      f"backward {2.5 * flops / bwd / 1e12:6.1f} TFLOP/s", file=sys.stderr)
    return {
        "kernel": f"PyTorch {torch.__version__} scaled_dot_product_attention, {label} backend (bf16, causal)",
        "points": points,
        "measured": True,
        "source": (f"measured by executor/cuda/attention_curve_bench.py on {gpu} ({datetime.date.today()}): "
                   f"hidden {HIDDEN}, {tokens} tokens per batch, causal, bf16; CUDA events, median of {ROUNDS} "
                   f"rounds of {REPEATS} calls after {WARMUP}; forward FLOPs 4 b s^2 h d / 2, backward 2.5x "
                   f"(timed as forward + backward less the forward)."),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokens", type=int, default=32768)
    a = ap.parse_args()
    try:
        import torch
        from torch.nn.attention import SDPBackend
    except ImportError as e:
        print(f"attention_curve_bench: needs PyTorch 2.3 or later with CUDA ({e})", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("attention_curve_bench: no CUDA device", file=sys.stderr)
        return 2
    gpu = torch.cuda.get_device_name()
    result = {}
    for name, label in (("CUDNN_ATTENTION", "cuDNN"), ("FLASH_ATTENTION", "flash")):
        backend = getattr(SDPBackend, name, None)
        if backend is None:
            print(f"attention_curve_bench: this PyTorch has no {name} backend", file=sys.stderr)
            continue
        c = curve(torch, backend, label, a.tokens, gpu)
        if c["points"]:
            result[label] = c
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    return 0 if result else 1


if __name__ == "__main__":
    sys.exit(main())
