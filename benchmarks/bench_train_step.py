"""One full training step (forward, cross-entropy, backward, SGD update with
momentum and weight decay), dmcp against PyTorch on the same architecture,
batch, float32 and thread count.

First it checks, in this process, that both give the same loss and the same
updated weights from identical weights and data (one step).  Then each
(worker, case) runs in a fresh subprocess so its peak RSS is its own; the
three workers take turns, in a rotated order each round, for --rounds rounds
and the median of each one's per-round images/s is reported.

The workers and their glibc malloc settings (`import dmcp` makes glibc keep
freed memory, see dmcp/__init__.py; the PyTorch workers never import dmcp):
  dmcp                     keep_freed_memory() (unless DMCP_KEEP_FREED_MEMORY=0)
  PyTorch                  the same settings through GLIBC_TUNABLES (mmap_max=0,
                           trim_threshold=2147483647 (INT_MAX, what dmcp gives mallopt), merged with the user's
                           tunables); plain inherited env if DMCP_KEEP_FREED_MEMORY=0
  PyTorch, glibc defaults  those two tunables removed
The ratio column is dmcp / PyTorch with the same settings.  All three inherit
this process's environment after `import dmcp`, so how idle threads wait
(GOMP_SPINCOUNT, or OMP_WAIT_POLICY and OPENBLAS_THREAD_TIMEOUT) is the same
for all (printed at the top).

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
from timing import allocator_settings, describe_machine, tunables_env  # noqa: E402

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
        self.net.backward(self.net.loss_module.backward(), need_dinp=False)
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


WORKERS = {  # worker -> (framework, label)
    "dmcp": ("dmcp", "dmcp"),
    "torch": ("torch", "PyTorch"),
    "torch-glibc": ("torch", "PyTorch, glibc defaults"),
}


def worker_env(name, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    if name == "torch" and os.environ.get("DMCP_KEEP_FREED_MEMORY", "1") != "0":
        return tunables_env(env, keep_freed=True)
    if name == "torch-glibc":
        return tunables_env(env, keep_freed=False)
    return env


def worker(name, case, steps, warmup):
    arch = CASES[case][0]
    framework = WORKERS[name][0]
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
    if framework == "torch" and "dmcp" in sys.modules:
        raise SystemExit("the PyTorch worker imported dmcp, which changes its allocator settings")
    print(json.dumps(dict(ips=x.shape[0] / statistics.median(times), rss=rss)))


def run_worker(name, case, args):
    out = subprocess.run([sys.executable, __file__, "--worker", name, "--cases", case,
                          "--steps", str(args.steps), "--warmup", str(args.warmup)],
                         env=worker_env(name, args.threads), capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{name} {case} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", choices=list(WORKERS))
    p.add_argument("--markdown", help="append the result table to this file")
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.cases[0], args.steps, args.warmup)

    import torch
    torch.set_num_threads(args.threads)
    header = describe_machine(args.threads)
    header += [f"worker {name} ({label}): allocator "
               + allocator_settings(worker_env(name, args.threads), dmcp_imported=fw == "dmcp")
               for name, (fw, label) in WORKERS.items()]
    print("\n".join(header), flush=True)
    for case in args.cases:
        validate(case)
    order = list(WORKERS)
    rows = []
    for case in args.cases:
        got = {name: [] for name in WORKERS}
        for r in range(args.rounds):
            for name in order[r % 3:] + order[:r % 3]:
                got[name].append(run_worker(name, case, args))
        ips = {n: statistics.median(v["ips"] for v in got[n]) for n in got}
        rss = {n: max(v["rss"] for v in got[n]) for n in got}
        ratio = ips["dmcp"] / ips["torch"]
        rows.append((case, ips["dmcp"], ips["torch"], ratio, ips["torch-glibc"], rss["dmcp"],
                     rss["torch"], rss["torch-glibc"]))
        print(f"  {case}: dmcp {ips['dmcp']:.1f} img/s, PyTorch {ips['torch']:.1f} img/s, ratio "
              f"{ratio:.2f}; PyTorch with glibc defaults {ips['torch-glibc']:.1f} img/s; peak RSS "
              f"dmcp {rss['dmcp']:.0f} MiB, PyTorch {rss['torch']:.0f} MiB, PyTorch glibc "
              f"defaults {rss['torch-glibc']:.0f} MiB", flush=True)
    table = ["| case | dmcp img/s | PyTorch img/s | ratio | PyTorch, glibc defaults img/s | "
             "dmcp peak RSS MiB | PyTorch peak RSS MiB | PyTorch, glibc defaults peak RSS MiB |",
             "|---|---|---|---|---|---|---|---|"]
    table += [f"| {c} | {a:.1f} | {b:.1f} | {r:.2f} | {g:.1f} | {m:.0f} | {n:.0f} | {o:.0f} |"
              for c, a, b, r, g, m, n, o in rows]
    print("\n".join(table))
    if args.markdown:
        with open(args.markdown, "a") as f:
            f.write("\n".join([""] + header + [""] + table) + "\n")


if __name__ == "__main__":
    main()
