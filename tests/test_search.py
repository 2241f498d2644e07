"""The search moves: E[F] leaves its starting point in both probability modes, reaches
the +-5% window with mmrazor's mutator settings, a stuck search is reported, and the
shipped ImageNet configs move E[F] on a few steps of synthetic data."""
import os
import warnings

import numpy as np
import pytest

import dmcp
from dmcp.algorithm import DMCP
from dmcp.cli import load_config
from dmcp.runner import Runner

from test_units import dmcp_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def supernet_mflops(shape):
    model = dmcp.build_model(dmcp_cfg("cifar20", shape=shape))
    return model.mutator.current_flops(shape) / 1e6


def budget_only_search(model, steps, lr=0.5):
    """Adam on the budget loss alone (mmrazor's mutator optimiser: Adam, lr 0.5,
    weight decay 1e-3); E[F] after every step."""
    opt = dmcp.nn.Adam(model.mutator.arch_parameters(), lr=lr, weight_decay=1e-3)
    trace = [model.expected_mflops()]
    for _ in range(steps):
        model.mutator.zero_alpha_grad()
        model.budget_loss_and_grad()
        opt.step()
        trace.append(model.expected_mflops())
    return trace


@pytest.mark.parametrize("prob_type", ["sigmoid", "exp"])
def test_expected_flops_leaves_its_start_under_the_budget_loss(prob_type):
    """Every alpha starts at 0: exp then keeps every channel (E[F] = the supernet's),
    sigmoid keeps each group with probability 1/2.  A target away from the start
    must move E[F] towards it from the first step on."""
    shape = (1, 28, 28)
    start = dmcp.build_model(dmcp_cfg("cifar20", prob_type, shape=shape)).expected_mflops()
    full = supernet_mflops(shape)
    if prob_type == "exp":
        assert start == pytest.approx(full, rel=1e-6)
    target = 0.5 * full if prob_type == "exp" else 0.5 * (start + full)
    model = dmcp.build_model(dmcp_cfg("cifar20", prob_type, shape=shape, target=target))
    trace = budget_only_search(model, 3)
    assert all(u.alpha.grad.any() for u in model.mutator.units if u.ngroups)
    moved = [abs(f - start) / start for f in trace[1:]]
    assert moved[0] > 1e-3, f"{prob_type}: E[F] did not leave {start:.3f} MFLOPs ({trace})"
    assert abs(trace[-1] - target) < abs(start - target)


@pytest.mark.parametrize("fraction", [0.5, 0.25, 0.12])
def test_search_reaches_the_window_with_mmrazors_settings(fraction):
    """mmrazor's defaults (exp probabilities, Adam lr 0.5 with weight decay 1e-3,
    log_l1 weight 0.1) bring E[F] from the supernet's FLOPs into [0.95 T, 1.05 T]
    within tens of steps; Adam's momentum then carries it across the loss's flat
    zone [0.95 T, T] and back, around the target."""
    shape = (1, 28, 28)
    target = fraction * supernet_mflops(shape)
    model = dmcp.build_model(dmcp_cfg("cifar20", "exp", shape=shape, target=target))
    trace = np.array(budget_only_search(model, 300)) / target
    inside = (trace >= 0.95) & (trace <= 1.05)
    assert inside.any() and inside.argmax() < 60, f"E[F]/T never in the window: {trace[::20]}"
    assert 0.9 < np.median(trace[-100:]) < 1.05, trace[-100::10]


def arch_steps(model, steps, x, y):
    opt = dmcp.nn.Adam(model.mutator.arch_parameters(), lr=0.5)
    for _ in range(steps):
        dmcp.algorithm.arch_step(model, opt, x, y, dmcp.dist.SingleProcess())


@pytest.mark.parametrize("prob_type,alpha,words", [("exp", -1.0, "below 0"),
                                                   ("sigmoid", 20.0, "saturated")])
def test_a_stuck_search_is_reported_once(prob_type, alpha, words):
    shape = (1, 12, 12)
    model = dmcp.build_model(dmcp_cfg("cifar20", prob_type, shape=shape, target=0.5))
    model.stall_steps = 4
    for u in model.mutator.units:
        u.alpha.data[...] = alpha
    x = np.random.default_rng(0).normal(size=(2,) + shape).astype(np.float32)
    y = np.array([1, 2])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        arch_steps(model, 3, x, y)
        assert not caught
        arch_steps(model, 4, x, y)
    stalls = [w for w in caught if "no architecture gradient" in str(w.message)]
    assert len(stalls) == 1 and words in str(stalls[0].message), [str(w.message) for w in caught]
    assert stalls[0].category is RuntimeWarning


def test_a_moving_search_is_not_reported():
    shape = (1, 12, 12)
    model = dmcp.build_model(dmcp_cfg("cifar20", "exp", shape=shape, target=0.5))
    model.stall_steps = 2
    x = np.random.default_rng(0).normal(size=(2,) + shape).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        arch_steps(model, 5, x, np.array([1, 2]))


def test_a_stall_warning_reaches_the_log(tmp_path):
    cfg = load_config(os.path.join(ROOT, "configs", "dmcp_resnet20_fmnist_supernet.py"))
    _synthetic(cfg, 1, 16, 8, 4)
    cfg["model"]["mutator_cfg"]["prob_type"] = "exp"
    cfg["model"]["target_flops"] = 3.0
    cfg["model"]["arch_start_train"], cfg["model"]["arch_train_freq"] = 0, 1
    cfg["custom_hooks"] = []
    runner = Runner(cfg, work_dir=str(tmp_path))
    runner.model.stall_steps = 1
    for u in runner.model.mutator.units:
        u.alpha.data[...] = -2.0
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        runner.train()
    log = open(next(str(p) for p in tmp_path.iterdir() if p.suffix == ".log")).read()
    assert "WARNING - DMCP:" in log and "no architecture gradient" in log


def _synthetic(cfg, channels, size, samples, batch):
    """Replace a config's data with a few synthetic images and FLOPs at their size."""
    ds = dict(type="SyntheticDataset", num_samples=samples, image_shape=(channels, size, size),
              num_classes=cfg["model"]["architecture"]["head"]["num_classes"])
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        cfg[key] = dict(batch_size=batch, num_workers=0, dataset=dict(ds),
                        sampler=dict(type="DefaultSampler", shuffle=key == "train_dataloader"))
    cfg["model"]["mutator_cfg"]["parse_cfg"]["demo_input"] = (1, channels, size, size)
    cfg["train_cfg"] = dict(by_epoch=True, max_epochs=1, val_interval=1)
    cfg["param_scheduler"] = None
    cfg["default_hooks"] = dict(checkpoint=dict(interval=1), logger=dict(interval=1))


@pytest.mark.parametrize("config", ["dmcp_resnet50_supernet.py", "dmcp_mbv2_supernet.py",
                                    "dmcp_resnet18_supernet.py", "dmcp_mbv2_1.5x_supernet.py"])
def test_shipped_imagenet_configs_search(config, tmp_path):
    """The published settings (exp probabilities, Adam lr 0.5, log_l1 weight 0.1) on a
    few 64 px synthetic images, arch steps from the first iteration, the target
    scaled from 224 px: E[F] leaves the supernet's FLOPs."""
    cfg = load_config(os.path.join(ROOT, "configs", config))
    assert cfg["model"]["mutator_cfg"].get("prob_type", "exp") == "exp"
    size = 64
    cfg["model"]["target_flops"] = cfg["model"]["target_flops"] * (size / 224) ** 2
    _synthetic(cfg, 3, size, 8, 4)
    cfg["model"]["arch_start_train"], cfg["model"]["arch_train_freq"] = 0, 1
    cfg["custom_hooks"] = []
    runner = Runner(cfg, work_dir=str(tmp_path))
    model = runner.model
    assert isinstance(model, DMCP)
    full = model.expected_mflops()
    runner.train()
    after = model.expected_mflops()
    assert after < 0.97 * full, f"{config}: E[F] {full:.1f} -> {after:.1f} MFLOPs"
    assert any(u.alpha.data.any() for u in model.mutator.units if u.ngroups)
