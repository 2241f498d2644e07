"""What DMCP's own machinery costs on top of plain training.

- expected FLOPs E[F] of the whole network and its gradient with respect to
  every alpha (the C routine the budget loss calls each architecture step);
- one architecture step (gated max-width forward with BN frozen, backward to
  the alphas, budget loss, Adam step) against one plain max-width training step;
- one full DMCP iteration (sandwich of max, min and two random widths with
  in-place distillation, then an architecture step) against 4 plain steps.

Validates first: dE[F]/dalpha against central differences, and the
architecture step must move every alpha.  Steps alternate, medians reported.

    python benchmarks/bench_dmcp.py [--arch resnet50] [--batch 16] [--rounds 5]
"""
import argparse
import os
import statistics
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dmcp import build_model  # noqa: E402
from dmcp.algorithm import arch_step, dmcp_train_step, plain_train_step  # noqa: E402
from dmcp.dist import SingleProcess  # noqa: E402
from dmcp.nn import SGD, Adam  # noqa: E402
from timing import describe_machine, median_seconds  # noqa: E402

ARCHS = {
    "resnet50": (dict(type="ResNet", depth=50), (3, 224, 224), 1000, 2000),
    "mbv2": (dict(type="MobileNetV2", widen_factor=1.0), (3, 224, 224), 1000, 200),
    "resnet20": (dict(type="ResNet_CIFAR", depth=20, in_channels=1), (1, 28, 28), 10, 15),
}


def build(arch):
    backbone, shape, ncls, target = ARCHS[arch]
    supernet = dict(type="ImageClassifier", backbone=backbone, neck=dict(type="GlobalAveragePooling"),
                    head=dict(type="LinearClsHead", num_classes=ncls))
    model = build_model(dict(type="DMCP", architecture=supernet, target_flops=target,
                             arch_start_train=0, arch_train_freq=1, distillation_times=0,
                             mutator_cfg=dict(pruning_cfg=(0.1, 1.0, 0.05), prob_type="sigmoid",
                                              parse_cfg=dict(demo_input=(1,) + shape))))
    rng = np.random.default_rng(0)
    for u in model.mutator.arch_parameters():
        u.data[...] = rng.normal(0.0, 1.0, u.data.shape)
    return model, shape, ncls


def check_flops_grad(model):
    mut = model.mutator
    mut.zero_alpha_grad()
    mut.expected_flops(model.input_shape, grad_scale=1.0)
    worst = 0.0
    rng = np.random.default_rng(1)
    params = mut.arch_parameters()
    for _ in range(10):
        p = params[rng.integers(len(params))]
        i = rng.integers(p.data.size)
        old = float(p.data.flat[i])
        h = 1e-2
        p.data.flat[i] = old + h
        fp = mut.expected_flops(model.input_shape)
        p.data.flat[i] = old - h
        fm = mut.expected_flops(model.input_shape)
        p.data.flat[i] = old
        fd = (fp - fm) / (2 * h)
        worst = max(worst, abs(fd - p.grad.flat[i]) / max(abs(fd), 1e3))
    mut.zero_alpha_grad()
    print(f"  dE[F]/dalpha vs central differences (10 random alphas): max rel error {worst:.2e}")
    if worst > 1e-2:
        raise SystemExit("expected-FLOPs gradient is wrong; timings would be meaningless")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--arch", default="resnet50", choices=list(ARCHS))
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    print("\n".join(describe_machine()), flush=True)
    model, shape, ncls = build(args.arch)
    net, mut = model.architecture, model.mutator
    print(f"{args.arch}, batch {args.batch}, {len(mut.units)} units, "
          f"{sum(u.data.size for u in mut.arch_parameters())} alphas")
    check_flops_grad(model)

    def flops_value_and_grad():
        mut.zero_alpha_grad()
        model.budget_loss_and_grad()

    t_flops = median_seconds(flops_value_and_grad, 200)
    print(f"  E[F] value + gradient: {t_flops * 1e3:.3f} ms")

    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch,) + shape, dtype=np.float32)
    y = rng.integers(0, ncls, args.batch).astype(np.int64)
    opt = SGD([p for _, p in net.named_parameters()], lr=0.01, momentum=0.9, weight_decay=1e-4)
    arch_opt = Adam(mut.arch_parameters(), lr=0.5, weight_decay=1e-3)
    dist = SingleProcess()
    net.train()

    before = [a.data.copy() for a in mut.arch_parameters()]
    arch_step(model, arch_opt, x, y, dist)
    moved = min(float(np.abs(a.data - b).max()) for a, b in zip(mut.arch_parameters(), before))
    print(f"  architecture step moves every unit's alphas (smallest max move {moved:.2e})")
    if moved <= 0:
        raise SystemExit("an architecture step left some alphas unchanged")
    arch_opt = Adam(mut.arch_parameters(), lr=1e-6, weight_decay=0.0)   # keep widths stable while timing

    def plain():
        mut.set_widths("max")
        plain_train_step(net, opt, x, y, dist)

    def arch():
        arch_step(model, arch_opt, x, y, dist)

    it = [0]

    def full():
        dmcp_train_step(model, opt, arch_opt, x, y, it[0], rng, dist)
        it[0] += 1

    for f in (plain, arch, full):        # warm up every path
        f()
    t = {"plain": [], "arch": [], "full": []}
    for r in range(args.rounds):
        t["plain"].append(median_seconds(plain, 1))
        t["arch"].append(median_seconds(arch, 1))
        t["full"].append(median_seconds(full, 1))
    med = {k: statistics.median(v) for k, v in t.items()}
    print(f"  plain max-width step {med['plain'] * 1e3:.1f} ms, architecture step "
          f"{med['arch'] * 1e3:.1f} ms ({100 * (med['arch'] / med['plain'] - 1):+.1f}% over plain)")
    print(f"  full DMCP iteration {med['full'] * 1e3:.1f} ms = {med['full'] / med['plain']:.2f} plain "
          f"steps ({med['full'] / (4 * med['plain']):.2f} x 4 plain steps)")


if __name__ == "__main__":
    main()
