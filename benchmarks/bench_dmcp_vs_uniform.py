"""Does DMCP earn its keep?  The DMCP-pruned network against a uniformly thinned
network of the same FLOPs (within 2%), both retrained from scratch with the same
schedule, over several seeds.  Appends a section to benchmarks/RESULTS.md.

    python benchmarks/bench_dmcp_vs_uniform.py \
        --fix-subnet work_dirs/pipeline/supernet/model_sample/expected_ch.json \
        --seeds 0 1 2 [--cfg-options train_cfg.max_epochs=4 ...]

Without --fix-subnet it first runs the default supernet search.
"""
import argparse
import json
import os
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from dmcp.algorithm import build_classifier  # noqa: E402
from dmcp.cli import load_config  # noqa: E402
from dmcp.flops import count_flops  # noqa: E402
from dmcp.runner import Runner  # noqa: E402
from dmcp.units import Mutator, load_subnet  # noqa: E402

SUPERNET = os.path.join(ROOT, "configs", "dmcp_resnet20_fmnist_supernet.py")
SUBNET = os.path.join(ROOT, "configs", "dmcp_resnet20_fmnist_subnet.py")


def uniform_subnet(supernet_cfg, target_macs, shape):
    """Every unit at round(r * C) channels, r found by bisection so FLOPs match the target."""
    net = build_classifier(supernet_cfg)
    mut = Mutator(net)
    lo, hi = 0.05, 1.0
    for _ in range(30):
        r = (lo + hi) / 2
        if _flops_at(mut, net, r, shape) > target_macs:
            hi = r
        else:
            lo = r
    best = min((lo, hi), key=lambda v: abs(_flops_at(mut, net, v, shape) - target_macs))
    f = _flops_at(mut, net, best, shape)
    return mut.export_subnet((1,) + tuple(shape)), f, best


def _flops_at(mut, net, r, shape):
    for u in mut.units:
        u.set_width(max(1, int(round(r * u.num_channels))))
    return count_flops(net, shape)["flops"]


def retrain(fix_subnet, seed, work_dir, options):
    cfg = load_config(SUBNET, options + [f"model.fix_subnet={fix_subnet}", f"randomness.seed={seed}"])
    runner = Runner(cfg, work_dir=work_dir)
    runner.train()
    return runner.evaluate(runner.val_loader, progress="test")["accuracy/top1"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--fix-subnet")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--work-dir", default="work_dirs/bench_dmcp_vs_uniform")
    p.add_argument("--cfg-options", nargs="+", default=[], help="applied to the retraining config")
    args = p.parse_args()
    t0 = time.time()
    fix = args.fix_subnet
    if fix is None:
        scfg = load_config(SUPERNET)
        search = Runner(scfg, work_dir=os.path.join(args.work_dir, "supernet"))
        search.train()
        fix = os.path.join(args.work_dir, "supernet", "model_sample", "expected_ch.json")
    scfg = load_config(SUPERNET)
    shape = (1, 28, 28)
    net = build_classifier(scfg.supernet)
    mut = Mutator(net)
    choices, _, _ = load_subnet(fix)
    mut.apply_choices(choices)
    dmcp_flops = count_flops(net, shape)["flops"]
    uni, uni_flops, ratio = uniform_subnet(scfg.supernet, dmcp_flops, shape)
    os.makedirs(args.work_dir, exist_ok=True)
    uni_path = os.path.join(args.work_dir, "uniform.json")
    with open(uni_path, "w") as f:
        json.dump(uni, f, indent=2)
    gap = abs(uni_flops - dmcp_flops) / dmcp_flops
    print(f"DMCP subnet {dmcp_flops / 1e6:.3f} MFLOPs, uniform x{ratio:.3f} {uni_flops / 1e6:.3f} MFLOPs "
          f"({100 * gap:.2f}% apart)")
    if gap > 0.02:
        raise SystemExit("uniform net could not be matched within 2% FLOPs")
    results = {"dmcp": [], "uniform": []}
    for seed in args.seeds:
        for name, path in (("dmcp", fix), ("uniform", uni_path)):
            top1 = retrain(path, seed, os.path.join(args.work_dir, f"{name}_seed{seed}"),
                              args.cfg_options)
            results[name].append(top1)
            print(f"seed {seed} {name}: top-1 {top1:.2f}")
    lines = ["", "## DMCP-pruned vs uniformly thinned ResNet-20 on Fashion-MNIST", "",
             f"Command: `python benchmarks/bench_dmcp_vs_uniform.py --fix-subnet {fix} --seeds "
             f"{' '.join(map(str, args.seeds))}"
             + (f" --cfg-options {' '.join(args.cfg_options)}" if args.cfg_options else "") + "`", "",
             f"Supernet 31.02 MFLOPs. DMCP subnet {dmcp_flops / 1e6:.3f} MFLOPs; uniform width x{ratio:.3f}: "
             f"{uni_flops / 1e6:.3f} MFLOPs ({100 * gap:.2f}% apart). Same retraining schedule "
             f"(configs/dmcp_resnet20_fmnist_subnet.py), seeds {args.seeds}, test set top-1 (10,000 images).",
             "", "| net | MFLOPs | top-1 per seed | mean | std |", "|---|---|---|---|---|"]
    for name, f in (("DMCP", dmcp_flops), ("uniform", uni_flops)):
        acc = results[name.lower()]
        lines.append(f"| {name} | {f / 1e6:.3f} | {', '.join(f'{a:.2f}' for a in acc)} | "
                     f"{np.mean(acc):.2f} | {np.std(acc, ddof=1) if len(acc) > 1 else 0:.2f} |")
    lines.append(f"\nWall time {time.time() - t0:.0f} s on this machine.")
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(ROOT, "benchmarks", "RESULTS.md"), "a") as f:
        f.write(text)


if __name__ == "__main__":
    main()
