"""Memory over a long run: resident set size (VmRSS) sampled through a few
hundred DMCP training iterations (sandwich weight step with distillation and an
architecture step every iteration) and evaluations, on synthetic data.  A leak
of one activation-sized array per iteration would add megabytes per sample.

    python benchmarks/bench_leak.py [--steps 400] [--every 25] [--batch 32]
"""
import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
from timing import describe_machine  # noqa: E402

CONFIG = os.path.join(os.path.dirname(HERE), "configs", "dmcp_resnet20_fmnist_supernet.py")


def rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def long_run(steps, every, batch, work_dir):
    """[(iteration, RSS MiB)] over ``steps`` DMCP iterations on synthetic 28x28 images."""
    from dmcp import algorithm
    from dmcp.cli import load_config
    from dmcp.runner import Runner
    cfg = load_config(CONFIG)
    ds = dict(type="SyntheticDataset", num_samples=4 * batch, image_shape=(1, 28, 28),
              num_classes=10)
    for key in ("train_dataloader", "val_dataloader"):
        cfg[key] = dict(batch_size=batch, num_workers=0, dataset=dict(ds),
                        sampler=dict(type="DefaultSampler", shuffle=key == "train_dataloader"))
    cfg["model"]["arch_start_train"] = 0
    cfg["model"]["arch_train_freq"] = 1
    cfg["model"]["distillation_times"] = 0
    runner = Runner(cfg, work_dir=work_dir)
    model, rng = runner.model, np.random.default_rng(0)
    samples = []
    it = 0
    while it < steps:
        for x, y in runner.train_loader:
            algorithm.dmcp_train_step(model, runner.optimizer, runner.arch_optimizer, x, y, it,
                                      rng, runner.dist)
            it += 1
            if it % every == 0:
                runner.evaluate(progress=None)
                samples.append((it, rss_mib()))
            if it >= steps:
                break
    runner.log.close()
    return samples


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args()
    import tempfile
    for line in describe_machine():
        print(line)
    with tempfile.TemporaryDirectory() as wd:
        samples = long_run(args.steps, args.every, args.batch, wd)
    print("\n| iteration | RSS MiB |\n|---|---|")
    for it, r in samples:
        print(f"| {it} | {r:.1f} |")
    half = samples[len(samples) // 2:]
    its, rs = np.array([s[0] for s in half], float), np.array([s[1] for s in half])
    slope = np.polyfit(its, rs, 1)[0] if len(half) > 1 else 0.0
    print(f"\nsecond half: {rs.min():.1f}-{rs.max():.1f} MiB, slope {slope * 100:.3f} MiB per 100 "
          f"iterations")


if __name__ == "__main__":
    main()
