#!/usr/bin/env python3
"""Runs executor/cuda/attention_curve_bench.py without a GPU, against a stand-in `torch` whose
attention takes a known time per FLOP, so the GPU run (which has minutes, not retries) does not
fail on a Python error: the script's JSON must hold each backend's points, sorted, with the
speeds the stand-in was given, and a cluster file carrying one must price with loom.

usage: test_attention_curve_bench.py LOOM_BIN SOURCE_DIR
"""
import json
import os
import subprocess
import sys
import tempfile
import textwrap

# A stand-in torch: a fake clock that each attention call advances by its causal FLOPs over a
# speed (forward 400e12, backward 300e12 FLOP/s), CUDA events that read it.
FAKE_TORCH = textwrap.dedent('''
    __version__ = "0.0-stand-in"
    bfloat16 = "bf16"
    CLOCK = [0.0]

    class Tensor:
        def __init__(self, shape):
            self.shape = shape

    def randn(shape, device=None, dtype=None, requires_grad=False):
        return Tensor(shape)

    def randn_like(t):
        return Tensor(t.shape)

    def _flops(t):
        b, h, s, d = t.shape
        return 4 * b * h * s * s * d / 2

    class _Cuda:
        class Event:
            def __init__(self, enable_timing=False):
                self.t = 0.0
            def record(self):
                self.t = CLOCK[0]
            def elapsed_time(self, end):
                return (end.t - self.t) * 1e3
        @staticmethod
        def is_available():
            return True
        @staticmethod
        def get_device_name():
            return "Stand-in GPU"
        @staticmethod
        def synchronize():
            pass
        @staticmethod
        def empty_cache():
            pass
    cuda = _Cuda()

    class _Autograd:
        @staticmethod
        def grad(out, inputs, grad):
            CLOCK[0] += 2.5 * _flops(out) / 300e12
            return inputs
    autograd = _Autograd()
''')
FAKE_FUNCTIONAL = textwrap.dedent('''
    import torch
    def scaled_dot_product_attention(q, k, v, is_causal=False):
        assert is_causal
        b, h, s, d = q.shape
        if s > 16384 and d == 128:
            raise RuntimeError("stand-in: no such kernel\\nmore")
        torch.CLOCK[0] += torch._flops(q) / 400e12
        return torch.Tensor(q.shape)
''')
FAKE_ATTENTION = textwrap.dedent('''
    import contextlib
    class SDPBackend:
        CUDNN_ATTENTION = "cudnn"
        FLASH_ATTENTION = "flash"
    @contextlib.contextmanager
    def sdpa_kernel(backend):
        yield
''')


def main():
    loom, src = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory() as tmp:
        pkg = os.path.join(tmp, "torch")
        os.makedirs(os.path.join(pkg, "nn"))
        for path, text in ((("__init__.py",), FAKE_TORCH), (("nn", "__init__.py"), "from . import functional, attention\n"),
                           (("nn", "functional.py"), FAKE_FUNCTIONAL), (("nn", "attention.py"), FAKE_ATTENTION)):
            with open(os.path.join(pkg, *path), "w") as f:
                f.write(text)
        out = os.path.join(tmp, "curve.json")
        env = dict(os.environ, PYTHONPATH=tmp, PYTHONDONTWRITEBYTECODE="1")
        r = subprocess.run([sys.executable, os.path.join(src, "executor/cuda/attention_curve_bench.py"), "--out", out],
                           env=env, capture_output=True, text=True)
        if r.returncode != 0:
            print(r.stdout, r.stderr)
            return 1
        curves = json.load(open(out))
        assert sorted(curves) == ["cuDNN", "flash"], sorted(curves)
        for c in curves.values():
            assert c["measured"] is True, c
            keys = [(p["head_dim"], p["seq"]) for p in c["points"]]
            assert keys == sorted(keys) and len(set(keys)) == len(keys), keys
            assert (128, 32768) not in keys and (64, 32768) in keys, keys  # refused shapes skipped
            for p in c["points"]:
                assert abs(p["forward_flops_per_s"] / 400e12 - 1) < 1e-9, p
                assert abs(p["backward_flops_per_s"] / 300e12 - 1) < 1e-9, p
        assert "skipped (stand-in: no such kernel)" in r.stderr, r.stderr
        # A cluster file carrying the measured curve prices with it.
        cluster = json.load(open(os.path.join(src, "models/clusters/dgx-h100.json")))
        cluster["efficiency"]["attention_curve"] = curves["cuDNN"]
        path = os.path.join(tmp, "measured-h100.json")
        json.dump(cluster, open(path, "w"))
        p = subprocess.run([loom, "predict", "--model", "llama3-8b", "--cluster", path, "--gpus", "8", "--global-batch",
                            "8", "--seq", "4096", "--tp", "1", "--pp", "1", "--micro-batch", "1"],
                           capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        assert "fused attention by the measured speed of PyTorch 0.0-stand-in" in p.stdout, p.stdout
    print("attention_curve_bench.py: both backends' points written and read by loom")
    return 0


if __name__ == "__main__":
    sys.exit(main())
