"""Inference of full and pruned networks: how much of a FLOPs reduction turns
into real speed, in dmcp's eval forward, in onnxruntime on the file
tools/export.py writes, and in PyTorch.

Nets: ResNet-50 (4.09 GFLOPs) and a pruned structure at about 2.2 GFLOPs;
MobileNetV2 (300.8 MFLOPs) and a pruned one at about 210 MFLOPs; each pruned
one also re-rounded to multiples of 8 (``--divisor 8``).  The pruned
structures are DMCP expected-width structures: every unit's Markov keep
probability set to one value, found by bisection so that the expected-width
structure lands on the target.

Engines, each (engine, net) in its own process with the same threads:
  dmcp          the slim ImageClassifier, eval mode (BN + activation in one pass)
  onnxruntime   the exported .onnx (BN folded), CPUExecutionProvider,
                intra-op threads = --threads, sequential execution
  torch         the net as an eval-mode PyTorch model runs it (conv, BN,
                activation as torch.nn.functional calls under inference_mode);
                never imports dmcp, gets dmcp's malloc settings through
                GLIBC_TUNABLES
  torch_folded  the same with BN folded into the convs (the exported graph):
                a stronger rival than what model.eval() gives
Reported: batch-1 latency (median ms) and batch-32 throughput (images/s), and
per engine the pruned net's speed-up over the full net against its FLOPs ratio.

    python benchmarks/bench_infer.py [--threads 2] [--reps 5] [--nets r50 mbv2]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
from timing import allocator_settings, describe_machine, tunables_env  # noqa: E402

NETS = {  # name -> (backbone, target MFLOPs of the pruned structure)
    "r50": (dict(type="ResNet", depth=50), 2200.0),
    "mbv2": (dict(type="MobileNetV2", widen_factor=1.0), 210.0),
}
SHAPE = (3, 224, 224)
ENGINES = ("dmcp", "onnxruntime", "torch", "torch_folded")


# ---------------------------------------------------------------- preparing the nets

def arch_cfg(net):
    return dict(type="ImageClassifier", backbone=dict(NETS[net][0]),
                neck=dict(type="GlobalAveragePooling"),
                head=dict(type="LinearClsHead", num_classes=1000))


def expected_structure(net, target_mflops):
    """Widths {unit: width} of the expected-width structure at the target."""
    from dmcp.algorithm import build_classifier
    from dmcp.units import Mutator
    model = build_classifier(arch_cfg(net))
    mut = Mutator(model, (0.1, 1.0, 0.05), "exp")

    def mflops(a):
        for u in mut.units:
            u.alpha.data[...] = a
        mut.set_widths("expected")
        return mut.current_flops(SHAPE) / 1e6

    lo, hi = 0.0, 2.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if mflops(mid) > target_mflops else (lo, mid)
    mflops(hi)
    return mut.widths()


def prepare(net, folder):
    """Writes <variant>.npz/.json/.onnx for full, pruned, pruned_div8; returns their FLOPs."""
    from dmcp.algorithm import build_classifier
    from dmcp.export import to_onnx
    from dmcp.flops import count_flops
    from dmcp.units import Rounding
    supernet = build_classifier(arch_cfg(net))
    rng = np.random.default_rng(0)
    for _, m in supernet.named_modules():           # trained-looking BN statistics
        if hasattr(m, "running_var"):
            m.running_mean[...] = rng.normal(0, 0.1, m.running_mean.shape)
            m.running_var[...] = rng.uniform(0.5, 2.0, m.running_var.shape)
            m.weight.data[...] = rng.uniform(0.5, 1.0, m.weight.data.shape)
    widths = expected_structure(net, NETS[net][1])
    r8 = Rounding(8)
    variants = {"full": {u.name: u.num_channels for u in supernet.units.values()},
                "pruned": widths,
                "pruned_div8": {n: r8(w, supernet.units[n].num_channels) for n, w in widths.items()}}
    out = {}
    for name, w in variants.items():
        model = build_classifier(arch_cfg(net), widths=w)
        model.load_state_dict(supernet.state_dict(), slice_channels=True)
        model.eval()
        base = os.path.join(folder, f"{net}_{name}")
        np.savez(base + ".npz", **model.state_dict())
        with open(base + ".json", "w") as f:
            json.dump(w, f)
        with open(base + ".onnx", "wb") as f:
            f.write(to_onnx(model, SHAPE).SerializeToString())
        with open(base + "_bn.onnx", "wb") as f:       # BN kept: the PyTorch eval-mode model
            f.write(to_onnx(model, SHAPE, fold_bn=False).SerializeToString())
        out[name] = count_flops(model, SHAPE)["flops"] / 1e6
    return out


# ---------------------------------------------------------------- workers

def _torch_runner(path):
    """The .onnx graph as torch.nn.functional calls (BN already folded)."""
    import onnx
    import torch
    import torch.nn.functional as F
    from onnx import numpy_helper
    m = onnx.load(path)
    consts = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in m.graph.initializer}
    nodes = [(n.op_type, list(n.input), n.output[0], {a.name: onnx.helper.get_attribute_value(a)
                                                     for a in n.attribute}) for n in m.graph.node]

    def run(x):
        env = dict(consts, input=x)
        for op, ins, out, at in nodes:
            a = [env[i] for i in ins]
            if op == "Conv":
                p = at["pads"]
                bias = a[2] if len(a) > 2 else None
                env[out] = F.conv2d(a[0], a[1], bias, at["strides"], (p[0], p[1]),
                                    at["dilations"], at["group"])
            elif op == "BatchNormalization":
                env[out] = F.batch_norm(a[0], a[3], a[4], a[1], a[2], False, 0.0, at["epsilon"])
            elif op == "Relu":
                env[out] = F.relu(a[0])
            elif op == "Clip":
                env[out] = F.hardtanh(a[0], float(a[1]), float(a[2]))
            elif op == "Add":
                env[out] = a[0] + a[1]
            elif op == "MaxPool":
                env[out] = F.max_pool2d(a[0], at["kernel_shape"], at["strides"], at["pads"][:2])
            elif op == "GlobalAveragePool":
                env[out] = F.adaptive_avg_pool2d(a[0], 1)
            elif op == "Flatten":
                env[out] = torch.flatten(a[0], 1)
            elif op == "Gemm":
                env[out] = F.linear(a[0], a[1], a[2])
            else:
                raise ValueError(op)
        return env["logits"]
    return run


def worker(engine, base, reps, threads):
    x32 = np.random.default_rng(1).standard_normal((32,) + SHAPE).astype(np.float32)
    x1 = x32[:1].copy()
    if engine == "dmcp":
        from dmcp.algorithm import build_classifier
        from dmcp.nn import no_grad
        net = os.path.basename(base).split("_")[0]
        with open(base + ".json") as f:
            widths = json.load(f)
        model = build_classifier(arch_cfg(net), widths=widths)
        with np.load(base + ".npz") as z:
            model.load_state_dict({k: z[k] for k in z.files})
        model.eval()

        def fwd(x):
            with no_grad():
                return model.forward(x)
    elif engine == "onnxruntime":
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sess = ort.InferenceSession(base + ".onnx", so, providers=["CPUExecutionProvider"])

        def fwd(x):
            return sess.run(["logits"], {"input": x})[0]
    else:
        import torch
        torch.set_num_threads(threads)
        run = _torch_runner(base + (".onnx" if engine == "torch_folded" else "_bn.onnx"))

        def fwd(x):
            with torch.inference_mode():
                return run(torch.from_numpy(x)).numpy()
    out = {}
    for name, x, n in (("b1", x1, 4 * reps), ("b32", x32, reps)):
        fwd(x)
        ts = []
        for _ in range(n):
            t0 = time.perf_counter()
            fwd(x)
            ts.append(time.perf_counter() - t0)
        out[name] = statistics.median(ts)
    out["logits"] = fwd(x1)[0, :5].tolist()
    return out


def run_worker(engine, base, args):
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    if engine.startswith("torch") and os.environ.get("DMCP_KEEP_FREED_MEMORY", "1") != "0":
        env = tunables_env(env, keep_freed=True)
    r = subprocess.run([sys.executable, __file__, "--worker", engine, base, "--reps",
                        str(args.reps), "--threads", str(args.threads)], env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{engine} {base} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    p.add_argument("--worker", nargs=2, metavar=("ENGINE", "BASE"))
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.reps, args.threads)))
        return
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import dmcp  # noqa: F401  (its import sets the allocator and thread env the workers inherit)
    for line in describe_machine(args.threads):
        print(line)
    env = tunables_env(dict(os.environ), keep_freed=True)
    print(f"allocator (PyTorch workers): {allocator_settings(env, dmcp_imported=False)}")
    import onnxruntime
    import torch
    print(f"onnxruntime {onnxruntime.__version__}; PyTorch {torch.__version__}")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for net in args.nets:
            flops = prepare(net, folder)
            res = {}
            order = list(ENGINES)
            for i, variant in enumerate(flops):
                order = order[1:] + order[:1]           # rotate who runs first
                for engine in order:
                    res[(variant, engine)] = run_worker(engine, os.path.join(folder, f"{net}_{variant}"),
                                                        args)
            for variant, mf in flops.items():
                ref = np.array(res[(variant, "dmcp")]["logits"])
                for engine in ENGINES:
                    r = res[(variant, engine)]
                    err = np.abs(np.array(r["logits"]) - ref).max() / max(np.abs(ref).max(), 1e-12)
                    full = res[("full", engine)]
                    rows.append((net, variant, mf, engine, r["b1"] * 1e3, 32 / r["b32"],
                                 flops["full"] / mf, full["b32"] / r["b32"], full["b1"] / r["b1"],
                                 err))
    print("\n| net | structure | MFLOPs | engine | b1 latency ms | b32 img/s | FLOPs ratio | "
          "b32 speed-up | b1 speed-up | speed-up / FLOPs ratio (b32) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for net, variant, mf, engine, lat, thr, fr, s32, s1, err in rows:
        eff = f"{s32 / fr:.2f}" if variant != "full" else "-"
        print(f"| {net} | {variant} | {mf:.1f} | {engine} | {lat:.1f} | {thr:.1f} | {fr:.2f}x | "
              f"{s32:.2f}x | {s1:.2f}x | {eff} |")
        assert err < 1e-3, f"{engine} {net} {variant}: logits differ from dmcp's by {err:.2e}"
    print("\n| net | structure | dmcp / PyTorch b32 | dmcp / PyTorch b1 | dmcp / PyTorch folded b32 "
          "| dmcp / PyTorch folded b1 | dmcp / onnxruntime b32 | dmcp / onnxruntime b1 |")
    print("|---|---|---|---|---|---|---|---|")
    by = {(r[0], r[1], r[3]): r for r in rows}
    for net in args.nets:
        for variant in ("full", "pruned", "pruned_div8"):
            d, o, t, tf = (by[(net, variant, e)] for e in ENGINES)
            print(f"| {net} | {variant} | {d[5] / t[5]:.2f}x | {t[4] / d[4]:.2f}x | "
                  f"{d[5] / tf[5]:.2f}x | {tf[4] / d[4]:.2f}x | {d[5] / o[5]:.2f}x | "
                  f"{o[4] / d[4]:.2f}x |")


if __name__ == "__main__":
    main()
