"""Every distinct conv shape of ResNet-50 (batch 16) and MobileNetV2 1.0x
(batch 32) at 224x224, and of ResNet-20 (batch 64) at 28x28 (--models resnet20): forward, backward-data and backward-weight GFLOP/s for
dmcp and PyTorch (aten's convolution_backward with the same output mask, as
autograd calls it), and dmcp's share of the SGEMM rate measured on the same
OpenBLAS in the same run.

Each shape is first checked against PyTorch (all three results), then timed
dmcp / PyTorch alternately; medians of --reps.

dmcp and PyTorch run in this one process, so they share one allocator: the
glibc settings `import dmcp` makes (keep freed memory, see dmcp/__init__.py)
hold for PyTorch's tensors too, and no fairness adjustment is needed.

    python benchmarks/bench_layers.py [--models resnet50 mbv2] [--reps 5] [--threads 2]
"""
import argparse
import collections
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dmcp  # noqa: E402
from dmcp import _C  # noqa: E402
from dmcp.flops import trace  # noqa: E402
from dmcp.nn import Conv2d  # noqa: E402
from timing import describe_machine, median_seconds  # noqa: E402

MODELS = {"resnet50": (dict(type="ResNet", depth=50), 16),
          "mbv2": (dict(type="MobileNetV2", widen_factor=1.0), 32),
          "resnet20": (dict(type="ResNet_CIFAR", depth=20, in_channels=1), 64)}
INPUT = {"resnet20": (1, 28, 28)}          # Fashion-MNIST; the others at 3x224x224

Shape = collections.namedtuple("Shape", "n c h w oc k stride pad groups")


def conv_shapes(model, batch):
    backbone = MODELS[model][0]
    net = dmcp.build_model(dict(type="ImageClassifier", backbone=backbone,
                                neck=dict(type="GlobalAveragePooling"),
                                head=dict(type="LinearClsHead", num_classes=1000)))
    seen = collections.OrderedDict()
    for name, m in trace(net, INPUT.get(model, (3, 224, 224))):
        if not isinstance(m, Conv2d):
            continue
        _, c, h, w = m._inp.shape
        s = Shape(batch, c, h, w, m.out_channels, m.kernel_size[0], m.stride[0], m.padding[0],
                  m.groups)
        seen.setdefault(s, []).append(name)
    return seen


def macs(s):
    oh = (s.h + 2 * s.pad - s.k) // s.stride + 1
    ow = (s.w + 2 * s.pad - s.k) // s.stride + 1
    return s.n * s.oc * oh * ow * (s.c // s.groups) * s.k * s.k, oh, ow


def sgemm_gflops(reps, n=2048):
    """cblas_sgemm through dmcp's linear kernel (the OpenBLAS dmcp links)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    t = median_seconds(lambda: _C.linear_forward(out, a, b, None), reps, warmup=1)
    return 2.0 * n ** 3 / t / 1e9


def bench_shape(s, reps, torch):
    rng = np.random.default_rng(0)
    flops, oh, ow = macs(s)
    flops *= 2
    x = rng.standard_normal((s.n, s.c, s.h, s.w), dtype=np.float32)
    wt = rng.standard_normal((s.oc, s.c // s.groups, s.k, s.k), dtype=np.float32) * 0.1
    dout = rng.standard_normal((s.n, s.oc, oh, ow), dtype=np.float32)
    geo = (s.stride, s.stride, s.pad, s.pad, 1, 1, s.groups)
    out = np.empty_like(dout)
    dinp = np.zeros_like(x)
    dw = np.zeros_like(wt)
    xt, wtt, dt = torch.from_numpy(x), torch.from_numpy(wt), torch.from_numpy(dout)
    targs = ([0], [s.stride] * 2, [s.pad] * 2, [1, 1], False, [0, 0], s.groups)

    def d_fwd():
        _C.conv2d_forward(out, x, wt, None, *geo)

    def d_bdata():     # as the layer calls it: dinp written over, not added to
        _C.conv2d_backward(dinp, None, None, dout, x, wt, *geo, False)

    def d_bweight():
        _C.conv2d_backward(None, dw, None, dout, x, wt, *geo)

    def t_fwd():
        return torch.nn.functional.conv2d(xt, wtt, None, s.stride, s.pad, 1, s.groups)

    def t_bdata():
        return torch.ops.aten.convolution_backward(dt, xt, wtt, *targs, [True, False, False])[0]

    def t_bweight():
        return torch.ops.aten.convolution_backward(dt, xt, wtt, *targs, [False, True, False])[1]

    # check all three against PyTorch before timing
    d_fwd()
    d_bdata()
    d_bweight()
    for label, got, want in (("forward", out, t_fwd()), ("backward-data", dinp, t_bdata()),
                             ("backward-weight", dw, t_bweight())):
        want = want.numpy()
        err = float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-6))
        if err > 1e-4:
            raise SystemExit(f"{s} {label}: dmcp differs from PyTorch by {err:.2e} (relative)")
    res = {}
    for label, d, t in (("fwd", d_fwd, t_fwd), ("bdata", d_bdata, t_bdata),
                        ("bweight", d_bweight, t_bweight)):
        td, tt = [], []
        d()
        t()
        for _ in range(reps):
            t0 = time.perf_counter()
            d()
            td.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            t()
            tt.append(time.perf_counter() - t0)
        res[label] = (flops / statistics.median(td) / 1e9, flops / statistics.median(tt) / 1e9)
    return res


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--markdown", help="append the tables to this file")
    args = p.parse_args()
    import torch
    torch.set_num_threads(args.threads)
    header = describe_machine(args.threads) + [
        "dmcp and PyTorch share this process and so its allocator settings"]
    print("\n".join(header), flush=True)
    peak = sgemm_gflops(args.reps)
    lines = header + ["", f"SGEMM 2048^3 through dmcp's OpenBLAS: {peak:.1f} GFLOP/s "
                          f"(OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', 'auto')})"]
    print(lines[-1], flush=True)
    for model in args.models:
        shapes = conv_shapes(model, MODELS[model][1])
        lines += ["", f"### {model}, batch {MODELS[model][1]}: {len(shapes)} distinct conv shapes", "",
                  "| C_in->C_out k s g | HxW | fwd dmcp / torch | bdata dmcp / torch | "
                  "bweight dmcp / torch | dmcp % of SGEMM (f/d/w) | layers |",
                  "|---|---|---|---|---|---|---|"]
        print("\n".join(lines[-4:]), flush=True)
        tot = collections.Counter()
        for s, names in shapes.items():
            r = bench_shape(s, args.reps, torch)
            g = "dw" if s.groups > 1 else "1"
            row = (f"| {s.c}->{s.oc} {s.k}x{s.k} s{s.stride} {g} | {s.h}x{s.w} | "
                   + " | ".join(f"{r[k][0]:.1f} / {r[k][1]:.1f}" for k in ("fwd", "bdata", "bweight"))
                   + " | " + "/".join(f"{100 * r[k][0] / peak:.0f}" for k in ("fwd", "bdata", "bweight"))
                   + f" | {len(names)} |")
            lines.append(row)
            print(row, flush=True)
            flops = 2 * macs(s)[0] * len(names)
            for k in ("fwd", "bdata", "bweight"):
                tot[f"d_{k}"] += flops / r[k][0]
                tot[f"t_{k}"] += flops / r[k][1]
        lines.append("")
        summary = (f"Whole {model} conv stack, time-weighted: "
                   + ", ".join(f"{k} dmcp {tot[f't_{k}'] / tot[f'd_{k}']:.2f}x PyTorch"
                               for k in ("fwd", "bdata", "bweight")))
        lines.append(summary)
        print(summary, flush=True)
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
