"""One full training step (forward, cross-entropy, backward, SGD update with
momentum and weight decay), dmcp against PyTorch on the same architecture,
batch, float32 and thread count.

First it checks, in this process, that both give the same loss and the same
updated weights from identical weights and data (one step).  Then each
(framework, case) runs in a fresh subprocess so its peak RSS is its own; the
subprocesses alternate dmcp / torch for --rounds rounds and the median of each
one's per-round images/s is reported.

    python benchmarks/bench_train_step.py [--cases r50b16 r50b32 mbv2b32 r20b64]
                                          [--rounds 3] [--steps 5] [--threads 2]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

CASES = {  # name -> (arch, batch, input shape)
    "r50b16": ("resnet50", 16, (3, 224, 224)),
    "r50b32": ("resnet50", 32, (3, 224, 224)),
    "mbv2b32": ("mbv2", 32, (3, 224, 224)),
    "r20b64": ("resnet20", 64, (1, 28, 28)),
}
BACKBONES = {
    "resnet50": dict(type="ResNet", depth=50),
    "mbv2": dict(type="MobileNetV2", widen_factor=1.0),
    "resnet20": dict(type="ResNet_CIFAR", depth=20, in_channels=1),
}
SGD_ARGS = dict(lr=0.01, momentum=0.9, weight_decay=1e-4)


def dmcp_model(arch):
    import dmcp
    ncls = 10 if arch == "resnet20" else 1000
    return dmcp.build_model(dict(type="ImageClassifier", backbone=dict(BACKBONES[arch]),
                                 neck=dict(type="GlobalAveragePooling"),
                                 head=dict(type="LinearClsHead", num_classes=ncls)), seed=0)


def batch(case, seed=0):
    arch, n, shape = CASES[case]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n,) + shape, dtype=np.float32)
    y = rng.integers(0, 10 if arch == "resnet20" else 1000, n).astype(np.int64)
    return x, y


class DmcpStep:
    def __init__(self, arch):
        from dmcp.nn import SGD
        self.net = dmcp_model(arch)
        self.net.train()
        self.opt = SGD([p for _, p in self.net.named_parameters()], **SGD_ARGS)

    def __call__(self, x, y):
        self.opt.zero_grad()
        loss = self.net.loss_module.forward(self.net.forward(x), y)
        self.net.backward(self.net.loss_module.backward())
        self.opt.step()
        return loss


class TorchStep:
    def __init__(self, arch, state=None):
        import torch
        import torch_models
        self.torch = torch
        self.net = torch_models.build(arch)
        if state is not None:
            torch_models.load_from_dmcp(self.net, state)
        self.net.train()
        self.opt = torch.optim.SGD(self.net.parameters(), **SGD_ARGS)
        self.loss = torch.nn.CrossEntropyLoss()

    def __call__(self, x, y):
        x, y = self.torch.from_numpy(x), self.torch.from_numpy(y)
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss(self.net(x), y)
        loss.backward()
        self.opt.step()
        return float(loss.detach())


def validate(case):
    """One step from the same weights and batch: same loss, same weight update (the
    largest difference against the largest update anywhere in the model; float32
    ReLU kinks flipping differently make small per-tensor differences)."""
    arch = CASES[case][0]
    d = DmcpStep(arch)
    w0 = {k: np.array(v, np.float64) for k, v in d.net.state_dict().items()}
    t = TorchStep(arch, d.net.state_dict())
    x, y = batch(case)
    ld, lt = d(x, y), t(x, y)
    sd = d.net.state_dict()
    diff = step = 0.0
    for k, v in t.net.state_dict().items():
        if v.is_floating_point() and "running" not in k:
            b = v.double().numpy()
            diff = max(diff, float(np.abs(np.asarray(sd[k], np.float64) - b).max()))
            step = max(step, float(np.abs(b - w0[k]).max()))
    rel = diff / step
    ok = abs(ld - lt) <= 1e-4 * max(1.0, abs(lt)) and rel <= 1e-2
    print(f"  validate {case}: loss dmcp {ld:.6f} torch {lt:.6f}; updated weights differ by "
          f"{diff:.2e} (largest update {step:.2e}) -> {'ok' if ok else 'MISMATCH'}", flush=True)
    if not ok:
        raise SystemExit(f"{case}: dmcp and PyTorch disagree; timings would be meaningless")


def peak_rss_mib():
    """This process's high-water resident set (VmHWM; getrusage's ru_maxrss would
    carry the parent's peak over the exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmHWM in /proc/self/status")


def worker(framework, case, steps, warmup):
    arch = CASES[case][0]
    if framework == "torch":
        import torch
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
        step = TorchStep(arch)
    else:
        step = DmcpStep(arch)
    x, y = batch(case)
    for _ in range(warmup):
        step(x, y)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step(x, y)
        times.append(time.perf_counter() - t0)
    rss = peak_rss_mib()
    print(json.dumps(dict(ips=x.shape[0] / statistics.median(times), rss=rss)))


def run_worker(framework, case, args):
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    out = subprocess.run([sys.executable, __file__, "--worker", framework, "--cases", case,
                          "--steps", str(args.steps), "--warmup", str(args.warmup)],
                         env=env, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{framework} {case} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", choices=["dmcp", "torch"])
    p.add_argument("--markdown", help="append the result table to this file")
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.cases[0], args.steps, args.warmup)

    import torch
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, OPENBLAS_CORETYPE="
          f"{os.environ.get('OPENBLAS_CORETYPE', '(dmcp default)')}")
    for case in args.cases:
        validate(case)
    rows = []
    for case in args.cases:
        got = {"dmcp": [], "torch": []}
        for r in range(args.rounds):
            for fw in ("dmcp", "torch") if r % 2 == 0 else ("torch", "dmcp"):
                got[fw].append(run_worker(fw, case, args))
        ips = {fw: statistics.median(v["ips"] for v in got[fw]) for fw in got}
        rss = {fw: max(v["rss"] for v in got[fw]) for fw in got}
        rows.append((case, ips["dmcp"], ips["torch"], ips["dmcp"] / ips["torch"], rss["dmcp"],
                     rss["torch"]))
        print(f"  {case}: dmcp {ips['dmcp']:.1f} img/s, torch {ips['torch']:.1f} img/s, "
              f"ratio {ips['dmcp'] / ips['torch']:.2f}; peak RSS dmcp {rss['dmcp']:.0f} MiB, "
              f"torch {rss['torch']:.0f} MiB", flush=True)
    table = ["| case | dmcp img/s | PyTorch img/s | ratio | dmcp peak RSS MiB | PyTorch peak RSS MiB |",
             "|---|---|---|---|---|---|"]
    table += [f"| {c} | {a:.1f} | {b:.1f} | {r:.2f} | {m:.0f} | {n:.0f} |" for c, a, b, r, m, n in rows]
    print("\n".join(table))
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
