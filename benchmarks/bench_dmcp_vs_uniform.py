"""Does DMCP earn its keep?  At several FLOPs budgets, the structure a DMCP
search finds against a uniformly thinned network and against random
structures from the same space, all at matched FLOPs (within 1%) and retrained
from scratch with the same schedule, over several seeds, on Fashion-MNIST.

    python benchmarks/bench_dmcp_vs_uniform.py [--net resnet20|resnet56]
        [--budgets 0.5 0.25 0.12] [--seeds 0 1 2 3 4] [--retrain-images N]
        [--flop-loss-weight W] [--arch-train-freq N] [--arch-lr LR] [--sampled]
        [--work-dir DIR] [--report-only]

For each budget b (a fraction of the supernet's FLOPs):
- DMCP: the supernet search of configs/dmcp_resnet20_fmnist_supernet.py (depth
  changed for resnet56) with target_flops = b x supernet FLOPs; its
  expected_ch.json is the DMCP structure (its FLOPs set the match for the rest);
- uniform: every unit at round(r x C) channels, r found by bisection;
- random: per seed, a random direction d_u ~ U(0, 1) per unit and widths
  min_u + t d_u (C_u - min_u), t found by bisection, so the structure lies in
  the search space (each unit between its minimum and full width);
then every structure is retrained with configs/dmcp_resnet20_fmnist_subnet.py
(3 epochs) for each seed and scored on the 10,000 test images.  Every result is
appended to RECORD/results.jsonl (benchmarks/dmcp_vs_uniform/, in the
repository) as it comes, with the searched structures beside it; a rerun
skips what is there, so the experiment grows over sessions.  The report
(stdout, RECORD/report_NET.md, benchmarks/dmcp_vs_uniform_NET.png) gives per budget the mean
top-1 of each structure and the paired differences DMCP - uniform and
DMCP - random with their standard errors.

Ablations, each reported as rows of its own (its structures, work dirs and
results carry a tag): `--flop-loss-weight W` searches with that budget-loss
weight instead of the config's 0.1; `--arch-train-freq N` takes an
architecture step every N iterations instead of 5 (a longer search of the
architecture); `--arch-lr LR` gives the architecture optimizer that
learning rate instead of 0.05; `--sampled` takes as DMCP's structure the search's direct
sample (subnet_*.json, drawn from the Markov process as mmrazor's
DMCPSubnetHook does) closest to the budget instead of expected_ch.json, and
matches uniform and random structures to it.
"""
import argparse
import glob
import json
import os
import shutil
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from dmcp.algorithm import build_classifier  # noqa: E402
from dmcp.config import load_config  # noqa: E402
from dmcp.flops import count_flops  # noqa: E402
from dmcp.runner import Runner  # noqa: E402
from dmcp.units import Mutator, load_subnet  # noqa: E402

SUPERNET = os.path.join(ROOT, "configs", "dmcp_resnet20_fmnist_supernet.py")
SUBNET = os.path.join(ROOT, "configs", "dmcp_resnet20_fmnist_subnet.py")
SHAPE = (1, 28, 28)
MATCH = 0.01                 # uniform and random structures within 1% of DMCP's FLOPs
STRUCTURES = ("dmcp", "uniform", "random")


def net_options(net):
    depth = {"resnet20": 20, "resnet56": 56}[net]
    return [f"model.architecture.backbone.depth={depth}", f"supernet.backbone.depth={depth}"]


class Space:
    """The supernet's units and a FLOPs count of any width assignment."""

    def __init__(self, net):
        cfg = load_config(SUPERNET, net_options(net))
        self.cfg = cfg
        self.net = build_classifier(cfg.supernet)
        self.mut = Mutator(self.net, pruning_cfg=tuple(cfg.model.mutator_cfg.pruning_cfg))
        self.full = self.flops({u.name: u.num_channels for u in self.mut.units})

    def flops(self, widths):
        for u in self.mut.units:
            u.set_width(widths[u.name])
        return count_flops(self.net, SHAPE)["flops"]

    def export(self, widths):
        for u in self.mut.units:
            u.set_width(widths[u.name])
        return self.mut.export_subnet((1,) + SHAPE)

    def matched(self, width_at, target, lower=None):
        """Bisection on t in [0, 1] for width_at(t) (monotone) to hit target FLOPs."""
        lo, hi = 0.0, 1.0
        best = None
        for _ in range(40):
            t = (lo + hi) / 2
            w = width_at(t)
            f = self.flops(w)
            if best is None or abs(f - target) < abs(best[1] - target):
                best = (w, f)
            if f > target:
                hi = t
            else:
                lo = t
        w, f = self.refine(*best, target, lower)
        if abs(f - target) > MATCH * target:
            return None
        return w, f

    def refine(self, widths, f, target, lower=None):
        """Single-channel steps (the one that lands closest to the target first)
        until the FLOPs are within MATCH of the target: bisection on a shared
        factor moves several units at once, too coarse for narrow nets."""
        lower = lower or {u.name: 1 for u in self.mut.units}
        for _ in range(64):
            if abs(f - target) <= MATCH * target:
                break
            step = -1 if f > target else 1
            best = None
            for u in self.mut.units:
                w = widths[u.name] + step
                if not lower[u.name] <= w <= u.num_channels:
                    continue
                trial = dict(widths, **{u.name: w})
                g = self.flops(trial)
                if best is None or abs(g - target) < abs(best[1] - target):
                    best = (trial, g)
            if best is None or abs(best[1] - target) >= abs(f - target):
                break
            widths, f = best
        return widths, f

    def uniform(self, target):
        units = self.mut.units

        def at(t):
            r = 0.05 + 0.95 * t
            return {u.name: max(1, min(u.num_channels, int(round(r * u.num_channels))))
                    for u in units}
        got = self.matched(at, target)
        if got is None:
            raise SystemExit(f"uniform width cannot match {target / 1e6:.3f} MFLOPs within 1%")
        return got

    def random(self, target, seed):
        rng = np.random.default_rng(10_000 + seed)
        units = self.mut.units
        for _ in range(100):
            d = {u.name: rng.uniform(0.0, 1.0) for u in units}
            scale = 1.0 / max(d.values())

            def at(t):
                return {u.name: u.min_ch + int(round(min(1.0, t * scale * d[u.name])
                                                     * (u.num_channels - u.min_ch)))
                        for u in units}
            got = self.matched(at, target, {u.name: u.min_ch for u in units})
            if got is not None and self.flops(at(0.0)) <= target:
                return got
        raise SystemExit(f"no random structure matched {target / 1e6:.3f} MFLOPs in 100 draws")


def load_results(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Ablation:
    """What an ablation changes, and the tags that keep its files and rows apart
    (all empty for the shipped settings).  The search's tag names the search's
    own changes; `tag` adds how its structure is read."""

    def __init__(self, weight=None, freq=None, sampled=False, arch_lr=None):
        self.weight, self.freq, self.sampled, self.arch_lr = weight, freq, sampled, arch_lr
        self.search_tag = (("" if weight is None else f"_w{weight:g}")
                           + ("" if freq is None else f"_f{freq}")
                           + ("" if arch_lr is None else f"_lr{arch_lr:g}"))
        self.tag = self.search_tag + ("_sampled" if sampled else "")
        parts = ([] if weight is None else [f"loss weight {weight:g}"]) \
            + ([] if freq is None else [f"arch step every {freq}"]) \
            + ([] if arch_lr is None else [f"arch lr {arch_lr:g}"]) \
            + (["direct sample"] if sampled else [])
        self.label = ", ".join(parts) or None

    def options(self):
        return ([] if self.weight is None else [f"model.flop_loss_weight={self.weight}"]) \
            + ([] if self.freq is None else [f"model.arch_train_freq={self.freq}"]) \
            + ([] if self.arch_lr is None else [f"optim_wrapper.mutator.optimizer.lr={self.arch_lr}"])


def record_label(rec):
    """A result's ablation label (None: the shipped settings); records from
    before the label existed carry only their loss weight."""
    if "ablation" in rec:
        return rec["ablation"]
    w = rec.get("flop_loss_weight")
    return None if w is None else f"loss weight {w:g}"


def closest_sample(space, samples, target):
    """The direct sample whose FLOPs are closest to the budget's."""
    best = None
    for path in samples:
        choices, _, _ = load_subnet(path)
        names = {u.key: u.name for u in space.mut.units}
        f = space.flops({names.get(k, k): v for k, v in choices.items()})
        if best is None or abs(f - target) < abs(best[1] - target):
            best = (path, f)
    return best[0]


def search(space, net, budget, work_dir, search_images, record, ab):
    """The DMCP structure for this budget: the one recorded in `record` (the
    repository keeps them), else a supernet search, whose expected_ch.json (or,
    for `--sampled`, its direct sample closest to the budget) is then recorded."""
    kept = os.path.join(record, f"{net}_b{budget:g}{ab.tag}_dmcp.json")
    out = os.path.join(work_dir, "search")
    picked = os.path.join(out, "model_sample", "expected_ch.json")
    fix = kept if os.path.exists(kept) else picked
    if not os.path.exists(fix):
        target = budget * space.full / 1e6
        opts = net_options(net) + [f"model.target_flops={target:.4f}",
                                   f"train_dataloader.dataset.indices={search_images}"]
        opts += ab.options()
        t0 = time.time()
        # an interrupted search continues from its last epoch's checkpoint
        again = "auto" if os.path.exists(os.path.join(out, "last_checkpoint")) else None
        Runner(load_config(SUPERNET, opts), work_dir=out, resume=again).train()
        print(f"search {net} budget {budget}{ab.search_tag}: {time.time() - t0:.0f} s", flush=True)
    if not os.path.exists(kept) and ab.sampled:
        samples = sorted(glob.glob(os.path.join(out, "model_sample", "subnet_*.json")))
        if not samples:
            raise SystemExit(f"the search in {out} left no direct samples")
        fix = closest_sample(space, samples, budget * space.full)
        print(f"direct sample: {fix}", flush=True)
    if not os.path.exists(kept):
        os.makedirs(record, exist_ok=True)
        shutil.copyfile(fix, kept)
    choices, _, _ = load_subnet(fix)
    names = {u.key: u.name for u in space.mut.units}
    return {names.get(k, k): v for k, v in choices.items()}, fix


def retrain(net, fix_subnet, seed, work_dir, images):
    opts = [f"model.fix_subnet={fix_subnet}", f"randomness.seed={seed}",
            f"model.cfg.backbone.depth={net_options(net)[0].rsplit('=', 1)[1]}"]
    if images:
        opts.append(f"train_dataloader.dataset.indices={images}")
    runner = Runner(load_config(SUBNET, opts), work_dir=work_dir)
    runner.train()
    return runner.evaluate(runner.val_loader, progress="test")["accuracy/top1"]


def run(args):
    space = Space(args.net)
    results_path = os.path.join(args.record, "results.jsonl")
    os.makedirs(args.record, exist_ok=True)
    images = args.retrain_images or 60000
    ab = Ablation(args.flop_loss_weight, args.arch_train_freq, args.sampled, args.arch_lr)
    done = {(r["net"], r["budget"], r["structure"], r["seed"]) for r in load_results(results_path)
            if r["retrain_images"] == images and record_label(r) == ab.label}
    plan = {}
    for budget in args.budgets:                 # every search first, then the seeds
        sdir = os.path.join(args.work_dir, args.net, f"b{budget:g}{ab.search_tag}")
        bdir = sdir + ("_sampled" if ab.sampled else "")
        widths, fix = search(space, args.net, budget, sdir, args.search_images, args.record, ab)
        target = space.flops(widths)
        plan[budget] = (bdir, target, {"dmcp": (widths, target), "uniform": space.uniform(target)})
    for seed in args.seeds:
        for budget in args.budgets:
            bdir, target, structures = plan[budget]
            for name in STRUCTURES:
                if (args.net, budget, name, seed) in done:
                    continue
                w, f = structures[name] if name != "random" else space.random(target, seed)
                path = os.path.join(bdir, f"{name}.json" if name != "random" else f"random_s{seed}.json")
                os.makedirs(bdir, exist_ok=True)
                with open(path, "w") as fh:
                    json.dump(space.export(w), fh, indent=1)
                t0 = time.time()
                top1 = retrain(args.net, path, seed, os.path.join(bdir, f"{name}_s{seed}"),
                               args.retrain_images)
                rec = dict(net=args.net, budget=budget, structure=name, seed=seed,
                           mflops=f / 1e6, full_mflops=space.full / 1e6, top1=top1,
                           retrain_images=images,
                           widths=[w[u.name] for u in space.mut.units],
                           seconds=round(time.time() - t0, 1))
                if ab.label is not None:
                    rec["ablation"] = ab.label
                with open(results_path, "a") as fh:
                    fh.write(json.dumps(rec) + "\n")
                print(f"{args.net} b{budget:g}{ab.tag} {name:7s} seed {seed}: {f / 1e6:.3f} MFLOPs "
                      f"top-1 {top1:.2f} ({rec['seconds']:.0f} s)", flush=True)


def report(args):
    images = args.retrain_images or 60000
    recs = [r for r in load_results(os.path.join(args.record, "results.jsonl"))
            if r["net"] == args.net and r["retrain_images"] == images]
    if not recs:
        raise SystemExit(f"no results for {args.net} in {args.record}/results.jsonl")
    lines = [f"{args.net} on Fashion-MNIST, supernet {recs[0]['full_mflops']:.2f} MFLOPs; "
             f"retrained on {recs[0]['retrain_images']} images, 3 epochs; test top-1 (%)", "",
             "| budget | structure | MFLOPs | seeds | top-1 mean | std | paired diff. DMCP - this (mean +- s.e.) |",
             "|---|---|---|---|---|---|---|"]
    plot = {}
    groups = {(r["budget"], record_label(r)) for r in recs}
    for budget, ablation in sorted(groups, key=lambda g: (-g[0], g[1] is not None, g[1] or "")):
        mine = [r for r in recs if r["budget"] == budget and record_label(r) == ablation]
        by = {s: {r["seed"]: r for r in mine if r["structure"] == s} for s in STRUCTURES}
        label = f"{budget:.0%}" + ("" if ablation is None else f" ({ablation})")
        for s in STRUCTURES:
            runs = by[s]
            if not runs:
                continue
            acc = np.array([runs[k]["top1"] for k in sorted(runs)])
            mf = np.mean([runs[k]["mflops"] for k in runs])
            diff = ""
            if s != "dmcp":
                common = sorted(set(runs) & set(by["dmcp"]))
                d = np.array([by["dmcp"][k]["top1"] - runs[k]["top1"] for k in common])
                if len(d) > 1:
                    diff = f"{d.mean():+.2f} +- {d.std(ddof=1) / np.sqrt(len(d)):.2f} (n={len(d)})"
                elif len(d):
                    diff = f"{d[0]:+.2f} (n=1)"
            std = acc.std(ddof=1) if len(acc) > 1 else 0.0
            lines.append(f"| {label} | {s} | {mf:.3f} | {len(acc)} | {acc.mean():.2f} | "
                         f"{std:.2f} | {diff} |")
            plot.setdefault(s, []).append((mf, acc.mean(), std / np.sqrt(len(acc))))
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(args.record, f"report_{args.net}.md"), "w") as f:
        f.write(text)
    _draw(plot, args, recs[0]["full_mflops"])


def _draw(plot, args, full):
    from dmcp.plots import _plt
    plt = _plt()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4.2))
    styles = {"dmcp": ("#4c72b0", "o", "DMCP (expected_ch)"), "uniform": ("#dd8452", "s", "uniform width"),
              "random": ("#55a868", "^", "random structure")}
    for s, pts in plot.items():
        pts.sort()
        c, m, label = styles[s]
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                    color=c, marker=m, capsize=3, label=label)
    ax.set_xlabel(f"MFLOPs (supernet {full:.1f})")
    ax.set_ylabel("test top-1 (%), mean +- s.e. over seeds")
    ax.set_title(f"{args.net} on Fashion-MNIST: structures at matched FLOPs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(ROOT, "benchmarks", f"dmcp_vs_uniform_{args.net}.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"plot: {path}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--net", choices=("resnet20", "resnet56"), default="resnet20")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.5, 0.25, 0.12])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--search-images", type=int, default=18000,
                   help="training images the supernet search sees (18000, as the config)")
    p.add_argument("--retrain-images", type=int, default=30000,
                   help="training images for each retraining (30000; 0: all 60,000); "
                        "results with another value are kept apart")
    p.add_argument("--work-dir", default=os.path.join(ROOT, "work_dirs", "bench_dmcp_vs_uniform"),
                   help="searches and retraining runs (checkpoints, logs)")
    p.add_argument("--record", default=os.path.join(ROOT, "benchmarks", "dmcp_vs_uniform"),
                   help="what is kept in the repository: results.jsonl, the searched "
                        "structures, the report (a rerun continues from them)")
    p.add_argument("--flop-loss-weight", type=float, default=None,
                   help="search with this budget-loss weight (an ablation; default: the "
                        "config's 0.1); its results are reported apart")
    p.add_argument("--arch-train-freq", type=int, default=None,
                   help="an architecture step every N iterations (an ablation; default: "
                        "the config's 5)")
    p.add_argument("--arch-lr", type=float, default=None,
                   help="the architecture optimizer's (Adam) learning rate (an ablation; "
                        "default: the config's 0.05; mmrazor's DMCP configs use 0.5)")
    p.add_argument("--sampled", action="store_true",
                   help="DMCP's structure is the search's direct sample closest to the "
                        "budget, not expected_ch.json (an ablation)")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    if not args.report_only:
        run(args)
    report(args)


if __name__ == "__main__":
    main()
