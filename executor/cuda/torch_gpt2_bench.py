# The PyTorch baseline executor/cuda/gpu_test.sh runs in the same job as loom, so that every
# throughput figure is a ratio from one run on one GPU.
# Side-by-side anchor: GPT-2 training-step throughput in PyTorch on one GPU.
# nanoGPT-style model (pre-LN, GELU, tied embeddings, SDPA flash attention), bf16 autocast,
# fused AdamW, optional torch.compile. Prints one JSON line per configuration.
import json, math, sys, time, argparse
import torch
import torch.nn as nn
import torch.nn.functional as F

SIZES = {  # layers, heads, hidden
    "124M": (12, 12, 768), "350M": (24, 16, 1024), "774M": (36, 20, 1280), "1558M": (48, 25, 1600),
}

class Block(nn.Module):
    def __init__(s, h, nh):
        super().__init__()
        s.nh = nh
        s.ln1, s.ln2 = nn.LayerNorm(h), nn.LayerNorm(h)
        s.qkv, s.proj = nn.Linear(h, 3 * h), nn.Linear(h, h)
        s.fc, s.fc2 = nn.Linear(h, 4 * h), nn.Linear(4 * h, h)
    def forward(s, x):
        B, T, C = x.shape
        q, k, v = s.qkv(s.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, s.nh, C // s.nh).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + s.proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + s.fc2(F.gelu(s.fc(s.ln2(x)), approximate="tanh"))

class GPT(nn.Module):
    def __init__(s, L, nh, h, V=50304, T=1024):
        super().__init__()
        s.wte, s.wpe = nn.Embedding(V, h), nn.Embedding(T, h)
        s.blocks = nn.ModuleList(Block(h, nh) for _ in range(L))
        s.lnf = nn.LayerNorm(h)
        s.head = nn.Linear(h, V, bias=False)
        s.head.weight = s.wte.weight
        for mod in s.modules():  # GPT-2 initialisation: N(0, 0.02), zero biases
            if isinstance(mod, (nn.Linear, nn.Embedding)):
                nn.init.normal_(mod.weight, std=0.02)
            if isinstance(mod, nn.Linear) and mod.bias is not None:
                nn.init.zeros_(mod.bias)
    def forward(s, idx, tgt):
        x = s.wte(idx) + s.wpe(torch.arange(idx.shape[1], device=idx.device))
        for b in s.blocks:
            x = b(x)
        logits = s.head(s.lnf(x))
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), tgt.view(-1))

def bench(name, B, T, steps, compile_):
    L, nh, h = SIZES[name]
    torch.manual_seed(0)
    m = GPT(L, nh, h, T=T).cuda()
    nparams = sum(p.numel() for p in m.parameters())
    opt = torch.optim.AdamW(m.parameters(), lr=3e-4, fused=True)
    f = torch.compile(m) if compile_ else m
    V = 50257
    def step():
        x = torch.randint(0, V, (B, T), device="cuda")
        y = torch.randint(0, V, (B, T), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = f(x, y)
        loss.backward()
        opt.step(); opt.zero_grad(set_to_none=True)
        return loss
    t0 = time.time()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    warm = time.time() - t0
    torch.cuda.reset_peak_memory_stats()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    for _ in range(steps):
        loss = step()
    e1.record(); torch.cuda.synchronize()
    dt = e0.elapsed_time(e1) / 1000 / steps
    tok = B * T / dt
    # llm.c's convention (llmc/mfu.h peak 988.8 TFLOP/s bf16 for H100 SXM): 6N + 6*L*h*T FLOPs per token
    flops_tok = 6 * nparams + 6 * L * h * T
    mfu = flops_tok * tok / 989e12
    print(json.dumps(dict(system="pytorch" + ("-compile" if compile_ else "-eager"), model=name, B=B, T=T,
                          params=nparams, step_s=round(dt, 4), tokens_per_s=round(tok), mfu_989=round(mfu, 4),
                          peak_mem_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
                          warmup_s=round(warm, 1), loss=round(loss.item(), 3))), flush=True)
    del m, opt, f
    torch.cuda.empty_cache()

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="124M:32:1,1558M:8:1")  # name:B:compile
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    for r in a.runs.split(","):
        n, B, c = r.split(":")
        try:
            bench(n, int(B), 1024, a.steps, c == "1")
        except Exception as e:
            print(json.dumps(dict(system="pytorch", model=n, error=str(e)[:300])), flush=True)
