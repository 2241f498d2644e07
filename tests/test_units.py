"""Channel units, the Markov process, expected FLOPs, the budget loss, gated
forward/backward, width modes and fix-subnet JSON (dmcp/units.py,
dmcp/algorithm.py) against DMCP.md, hand-computed values, central finite
differences and PyTorch autograd re-implementations.
"""
import json
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dmcp
from dmcp.algorithm import arch_step, build_pruned
from dmcp.dist import SingleProcess
from dmcp.units import ChannelUnit, UserError, apply_subnet, budget_loss

from test_models import (RefClassifier, build_dmcp, classifier_cfg, copy_to_ref, randomize,
                         ref_forward, relu_masks)

# ---------------------------------------------------------------------------
# helpers: DMCP.md written out independently of dmcp
# ---------------------------------------------------------------------------


def groups_of(c, cfg):
    """DMCP.md section 1 -> (g, n, m); a unit too small for groups gets (0, 0, C)."""
    min_rate, max_rate, offset = cfg
    g = math.floor(offset * c / max_rate)
    n = math.floor((max_rate - min_rate) / offset + 1e-4)
    if g < 1 or n < 1 or c - g * n < 1:
        return 0, 0, c
    return g, n, c - g * n


def torch_P(alpha, prob_type):
    if prob_type == "sigmoid":
        p = torch.sigmoid(alpha)
    else:
        p = torch.exp(-torch.clamp(alpha, min=0.0))
    return torch.cumprod(p, 0)


def torch_alphas(mut):
    """unit name -> float64 leaf tensor holding the unit's alpha (units with groups)."""
    return {u.name: torch.tensor(u.alpha.data.astype(np.float64), requires_grad=True)
            for u in mut.units if u.ngroups}


def layer_geometry(ref, shape):
    """module name -> (kh, kw, OH, OW, in_channels, out_features) of every conv/linear."""
    geo = {}
    hooks = []
    for name, m in ref.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(
                lambda mod, i, o, name=name: geo.__setitem__(
                    name, (mod.kernel_size[0], mod.kernel_size[1], o.shape[2], o.shape[3],
                           mod.in_channels, mod.out_channels))))
        elif isinstance(m, torch.nn.Linear):
            geo[name] = (1, 1, 1, 1, m.in_features, m.out_features)
    ref.eval()
    with torch.no_grad():
        ref(torch.zeros((1,) + tuple(shape), dtype=torch.float64))
    for h in hooks:
        h.remove()
    return geo


def torch_expected_flops(ref, shape, mut, alphas, prob_type):
    """DMCP.md section 4: E[c] = m + g * sum_k P_k; conv E[cin] E[cout] kh kw OH OW,
    depthwise E[c] kh kw OH OW, linear E[cin] * out; fixed widths as constants."""
    units = {u.name: u for u in mut.units}
    E = {}
    for name, c in ref.ctx.unit_channels.items():
        g, n, m = groups_of(c, mut.pruning_cfg)
        E[name] = m + g * torch_P(alphas[name], prob_type).sum() if n else torch.tensor(float(c))
        assert units[name].num_channels == c
    total = torch.zeros((), dtype=torch.float64)
    for name, (kh, kw, oh, ow, cin, cout) in layer_geometry(ref, shape).items():
        in_u, out_u, dw = ref.ctx.layer_units[name]
        ein = E[in_u] if in_u else cin
        if name == "head.fc":
            total = total + ein * cout
        elif dw:
            total = total + ein * kh * kw * oh * ow
        else:
            total = total + ein * (E[out_u] if out_u else cout) * kh * kw * oh * ow
    return total


def mutator_for(arch, cfg=(0.1, 1.0, 0.1), prob_type="sigmoid", seed=0):
    model = build_dmcp(arch, seed=seed)
    return model, dmcp.Mutator(model, cfg, prob_type)


def set_random_alphas(mut, rng, prob_type):
    for u in mut.units:
        if u.ngroups:
            if prob_type == "sigmoid":
                a = rng.normal(0.5, 1.5, u.ngroups)
            else:   # both sides of the kink at 0, none at 0 exactly
                a = rng.uniform(-0.3, 0.8, u.ngroups)
                a[np.abs(a) < 0.02] = 0.1
            u.alpha.data[...] = a


SHAPES = {"cifar20": (1, 28, 28), "mbv2": (3, 32, 32)}


# ---------------------------------------------------------------------------
# groups and candidates (DMCP.md section 1)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("c,cfg,g,n,m", [
    (64, (0.1, 1.0, 0.1), 6, 9, 10),
    (256, (0.1, 1.0, 0.1), 25, 9, 31),
    (64, (0.1, 1.0, 0.05), 3, 18, 10),
    (2048, (0.1, 1.0, 0.05), 102, 18, 212),
    (32, (0.1, 1.0, 0.05), 1, 18, 14),
    (64, (0.3, 0.9, 0.1), 7, 6, 22),          # (0.9-0.3)/0.1 = 5.9999...: the 1e-4 matters
    (16, (0.1, 1.0, 0.05), 0, 0, 16),         # 0.8 channels per group: not pruned
])
def test_groups_follow_the_spec(c, cfg, g, n, m):
    u = ChannelUnit("u", c)
    u.set_groups(*cfg)
    assert (u.group_size, u.ngroups, u.min_ch) == (g, n, m)
    assert groups_of(c, cfg) == (g, n, m)
    cands = u.candidates()
    assert cands == [m + k * g for k in range(n + 1)] if n else cands == [c]
    assert cands[-1] == c and cands[0] == m
    assert u.alpha.data.shape == (n,) and not u.alpha.data.any()


@pytest.mark.parametrize("arch", ["resnet50", "mbv2", "cifar20"])
@pytest.mark.parametrize("cfg", [(0.1, 1.0, 0.1), (0.1, 1.0, 0.05)])
def test_mutator_sets_every_units_groups(arch, cfg):
    model = build_dmcp(arch)
    mut = dmcp.Mutator(model, cfg, "exp")
    assert [u.name for u in mut.units] == list(model.units)
    for u in mut.units:
        g, n, m = groups_of(u.num_channels, cfg)
        assert (u.group_size, u.ngroups, u.min_ch) == (g, n, m), u.name
    assert mut.nalpha == sum(u.ngroups for u in mut.units)
    assert len(mut.arch_parameters()) == sum(1 for u in mut.units if u.ngroups)


@pytest.mark.parametrize("cfg", [(0.0, 1.0, 0.1), (0.5, 0.4, 0.1), (0.1, 1.2, 0.1), (0.1, 1.0, 0.0),
                                 (0.1, 1.0, 0.95)])
def test_bad_pruning_cfg_is_a_user_error(cfg):
    model = build_dmcp("cifar20")
    with pytest.raises(UserError, match="pruning_cfg"):
        dmcp.Mutator(model, cfg, "exp")
    with pytest.raises(UserError, match="prob_type"):
        dmcp.Mutator(model, (0.1, 1.0, 0.1), "softmax")


# ---------------------------------------------------------------------------
# Markov probabilities (DMCP.md section 2)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("prob_type", ["sigmoid", "exp"])
def test_markov_P_and_its_gradient(prob_type, close):
    rng = np.random.default_rng(5)
    u = ChannelUnit("u", 200)
    u.set_groups(0.1, 1.0, 0.05)
    a = rng.normal(0.2, 1.0, u.ngroups).astype(np.float32)
    a[np.abs(a) < 0.02] = 0.3
    u.alpha.data[...] = a
    pt = dmcp.units.PROB_TYPES[prob_type]
    u.compute_probs(pt)
    ad = a.astype(np.float64)
    p = 1 / (1 + np.exp(-ad)) if prob_type == "sigmoid" else np.exp(-np.maximum(ad, 0))
    close(u.P, np.cumprod(p), f"markov P {prob_type}", rtol=1e-6, atol=0)
    assert np.all(np.diff(u.P) <= 0) and np.all(u.P > 0) and np.all(u.P <= 1)
    # dL/dalpha for L = sum_k dP_k * P_k, accumulated into alpha.grad
    dP = rng.normal(size=u.ngroups).astype(np.float32)
    u.dP[...] = dP
    u.alpha.grad[...] = 0.5
    u.alpha_backward(pt)
    at = torch.tensor(ad, requires_grad=True)
    (torch_P(at, prob_type) * torch.from_numpy(dP.astype(np.float64))).sum().backward()
    close(u.alpha.grad - 0.5, at.grad.numpy(), f"markov dalpha {prob_type}", rtol=1e-5, atol=1e-7)
    assert not u.dP.any(), "dP is consumed by alpha_backward"


def test_exp_prob_at_zero_and_below():
    """exp: p = 1 for alpha <= 0; d log p / d alpha = -1 for alpha >= 0 (the bound is
    inclusive, as torch.clamp passes the gradient at it) and 0 below."""
    u = ChannelUnit("u", 64)
    u.set_groups(0.1, 1.0, 0.1)
    u.alpha.data[...] = np.array([0, -1, -5, 0, 0.5, 0, -2, 0, 0], np.float32)
    u.compute_probs(1)
    np.testing.assert_allclose(u.P[:4], 1.0)
    np.testing.assert_allclose(u.P[4:], math.exp(-0.5), rtol=1e-6)
    u.dP[...] = 1.0
    u.alpha_backward(1)
    tail = np.cumsum(u.P[::-1].astype(np.float64))[::-1]
    want = np.where(u.alpha.data >= 0, -tail, 0.0)
    np.testing.assert_allclose(u.alpha.grad, want, rtol=1e-6, atol=0)
    at = torch.tensor(u.alpha.data.astype(np.float64), requires_grad=True)
    torch_P(at, "exp").sum().backward()
    np.testing.assert_allclose(u.alpha.grad, at.grad.numpy(), rtol=1e-6, atol=0)
    assert u.alpha.grad[0] < 0, "alpha = 0, where every search starts, must get gradient"


# ---------------------------------------------------------------------------
# expected FLOPs (DMCP.md section 4)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["cifar20", "mbv2"])
@pytest.mark.parametrize("prob_type", ["sigmoid", "exp"])
def test_expected_flops_and_gradient_match_autograd(arch, prob_type, close):
    model, mut = mutator_for(arch, prob_type=prob_type)
    set_random_alphas(mut, np.random.default_rng(21), prob_type)
    ref = RefClassifier(arch, 10 if arch == "cifar20" else 1000, SHAPES[arch][0])
    shape = SHAPES[arch]
    alphas = torch_alphas(mut)
    want = torch_expected_flops(ref, shape, mut, alphas, prob_type)
    want.backward()
    got = mut.expected_flops(shape)
    assert got == pytest.approx(want.detach().item(), rel=1e-6)
    mut.zero_alpha_grad()
    assert mut.expected_flops(shape, grad_scale=2.5) == pytest.approx(got, rel=1e-12)
    for u in mut.units:
        if u.ngroups:
            close(u.alpha.grad, 2.5 * alphas[u.name].grad.numpy(), f"E[F] dalpha {arch} {prob_type}",
                  rtol=1e-5, atol=1e-3)
    # grad_scale accumulates
    mut.expected_flops(shape, grad_scale=-1.0)
    u = next(u for u in mut.units if u.ngroups)
    close(u.alpha.grad, 1.5 * alphas[u.name].grad.numpy(), "E[F] dalpha accumulates", rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("arch", ["cifar20", "mbv2"])
def test_expected_flops_gradient_vs_finite_differences(arch):
    model, mut = mutator_for(arch, prob_type="sigmoid")
    set_random_alphas(mut, np.random.default_rng(4), "sigmoid")
    shape = SHAPES[arch]
    mut.zero_alpha_grad()
    mut.expected_flops(shape, grad_scale=1.0)
    rng = np.random.default_rng(0)
    units = [u for u in mut.units if u.ngroups]
    for u in [units[0], units[len(units) // 2], units[-1]]:
        for k in rng.choice(u.ngroups, 2, replace=False):
            a0 = u.alpha.data[k]
            u.alpha.data[k] = a0 + np.float32(1e-2)
            fp, hp = mut.expected_flops(shape), u.alpha.data[k]
            u.alpha.data[k] = a0 - np.float32(1e-2)
            fm, hm = mut.expected_flops(shape), u.alpha.data[k]
            u.alpha.data[k] = a0
            fd = (fp - fm) / (float(hp) - float(hm))
            assert u.alpha.grad[k] == pytest.approx(fd, rel=2e-3, abs=1e-5 * fp), f"{u.name}[{k}]"


@pytest.mark.parametrize("arch", ["cifar20", "mbv2", "resnet18"])
@pytest.mark.parametrize("prob_type,full,empty", [("sigmoid", 30.0, -30.0), ("exp", -3.0, 40.0),
                                                  ("exp", 0.0, 40.0)])
def test_expected_flops_limits(arch, prob_type, full, empty):
    """P -> 1 gives the full model's FLOPs, P -> 0 the min-width model's."""
    model, mut = mutator_for(arch, prob_type=prob_type)
    shape = SHAPES.get(arch, (3, 64, 64))
    mut.set_widths("max")
    fmax = dmcp.count_flops(model, shape)["flops"]
    mut.set_widths("min")
    fmin = dmcp.count_flops(model, shape)["flops"]
    assert fmin < 0.2 * fmax
    assert mut.current_flops(shape) == fmin
    for u in mut.units:
        u.alpha.data[...] = full
    assert mut.expected_flops(shape) == pytest.approx(fmax, rel=1e-6)
    for u in mut.units:
        u.alpha.data[...] = empty
    assert mut.expected_flops(shape) == pytest.approx(fmin, rel=1e-6)
    exp_ch = mut.expected_channels()
    assert all(exp_ch[u.name] == pytest.approx(u.min_ch, abs=1e-4) for u in mut.units)


# ---------------------------------------------------------------------------
# budget loss (DMCP.md section 5)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("f,t,kind,want", [
    # log_l1, F < 0.95T
    (500.0, 1000.0, "log_l1", math.log(0.1 * 500)),        # |F-T| > 200: r = 0.1
    (900.0, 1000.0, "log_l1", math.log(100)),              # r = 1
    (800.0, 1000.0, "log_l1", math.log(200)),              # |F-T| = 200 is not > 200
    (949.0, 1000.0, "log_l1", math.log(51)),
    # dead zone [0.95T, T)
    (950.0, 1000.0, "log_l1", 0.0),
    (975.5, 1000.0, "log_l1", 0.0),
    (999.9, 1000.0, "log_l1", 0.0),
    # F >= T: distance to 0.95T, r from |F - T|
    (1000.0, 1000.0, "log_l1", math.log(50)),
    (1100.0, 1000.0, "log_l1", math.log(150)),
    (1190.0, 1000.0, "log_l1", math.log(240)),
    (1300.0, 1000.0, "log_l1", math.log(0.1 * 350)),
    (4089.184256, 2000.0, "log_l1", math.log(0.1 * (4089.184256 - 1900))),
    (300.0, 1000.0, "l1", 700.0),
    (1300.0, 1000.0, "l1", 300.0),
    (300.0, 1000.0, "l2", 490000.0),
    (1010.0, 1000.0, "l2", 100.0),
    (1300.0, 1000.0, "inverted_log_l1", math.log(300 + 1e-5)),
    (700.0, 1000.0, "inverted_log_l1", math.log(300 + 1e-5)),
    (1000.0, 1000.0, "inverted_log_l1", math.log(1e-5)),
])
def test_budget_loss_values(f, t, kind, want):
    loss, _ = budget_loss(f, t, kind)
    assert loss == pytest.approx(want, rel=1e-12, abs=1e-12)


@pytest.mark.parametrize("kind", ["log_l1", "l1", "l2", "inverted_log_l1"])
@pytest.mark.parametrize("f", [300.0, 700.0, 940.0, 970.0, 1050.0, 1150.0, 1400.0, 5000.0])
def test_budget_loss_derivative_vs_finite_differences(kind, f):
    t, h = 1000.0, 1e-4
    _, d = budget_loss(f, t, kind)
    fd = (budget_loss(f + h, t, kind)[0] - budget_loss(f - h, t, kind)[0]) / (2 * h)
    assert d == pytest.approx(fd, rel=1e-6, abs=1e-9)
    if kind == "log_l1" and 950 <= f < 1000:
        assert d == 0.0


def test_budget_loss_unknown_type():
    with pytest.raises(UserError, match="flops_loss_type"):
        budget_loss(1.0, 1.0, "huber")


def dmcp_cfg(arch, prob_type="sigmoid", target=2000, shape=(3, 224, 224), loss="log_l1", weight=0.1,
             pruning=(0.1, 1.0, 0.1)):
    return dict(type="DMCP", architecture=classifier_cfg(arch),
                mutator_cfg=dict(type="DMCPChannelMutator", pruning_cfg=pruning, prob_type=prob_type,
                                 parse_cfg=dict(type="ChannelAnalyzer", demo_input=[1] + list(shape))),
                target_flops=target, flops_loss_type=loss, flop_loss_weight=weight)


def test_target_flops_is_in_mflops():
    """target_flops=2000 means 2000 MFLOPs = 2 GMACs at the demo input: ResNet-50 at
    full width (4089.18 MFLOPs) is above it, in the r=0.1 branch of log_l1."""
    model = dmcp.build_model(dmcp_cfg("resnet50"))
    assert model.input_shape == (3, 224, 224)
    for u in model.mutator.units:
        u.alpha.data[...] = 30.0
    assert model.expected_mflops() == pytest.approx(4089.184256, rel=1e-6)
    loss, f = model.budget_loss_and_grad()
    assert f == pytest.approx(4089.184256, rel=1e-6)
    assert loss == pytest.approx(0.1 * math.log(0.1 * (4089.184256 - 0.95 * 2000)), rel=1e-6)
    # a target just above the full model: dead zone, no loss, no gradient
    model.target_mflops = 4200.0
    model.mutator.zero_alpha_grad()
    assert model.budget_loss_and_grad()[0] == 0.0
    assert not any(p.grad.any() for p in model.mutator.arch_parameters())


@pytest.mark.parametrize("kind", ["log_l1", "l1", "l2", "inverted_log_l1"])
def test_budget_loss_gradient_into_alpha(kind, close):
    """alpha.grad = weight * dloss/dF[MFLOPs] * dE[F][MACs]/dalpha / 1e6 (autograd)."""
    shape = (1, 28, 28)
    model = dmcp.build_model(dmcp_cfg("cifar20", shape=shape, target=3.0, loss=kind, weight=0.3))
    mut = model.mutator
    set_random_alphas(mut, np.random.default_rng(9), "sigmoid")
    ref = RefClassifier("cifar20", 10, 1)
    alphas = torch_alphas(mut)
    e = torch_expected_flops(ref, shape, mut, alphas, "sigmoid") / 1e6
    t = torch.tensor(3.0, dtype=torch.float64)
    if kind == "log_l1":
        assert e.detach().item() > 3.0 and abs(e.detach().item() - 3.0) < 200
        loss = torch.log(torch.abs(e - 0.95 * t))
    elif kind == "l1":
        loss = torch.abs(e - t)
    elif kind == "l2":
        loss = (e - t) ** 2
    else:
        loss = torch.log(torch.abs(e - t) + 1e-5)
    (0.3 * loss).backward()
    mut.zero_alpha_grad()
    got, f = model.budget_loss_and_grad()
    assert f == pytest.approx(e.detach().item(), rel=1e-6)
    assert got == pytest.approx(0.3 * loss.detach().item(), rel=1e-5)
    for u in mut.units:
        if u.ngroups:
            close(u.alpha.grad, alphas[u.name].grad.numpy(), f"budget dalpha {kind}", rtol=1e-4, atol=1e-9)


# ---------------------------------------------------------------------------
# gated forward / backward (DMCP.md section 3) and the architecture step
# ---------------------------------------------------------------------------

def gate_vectors(mut, alphas, prob_type):
    out = {}
    for u in mut.units:
        if u.ngroups:
            P = torch_P(alphas[u.name], prob_type)
            out[u.name] = torch.cat([torch.ones(u.min_ch, dtype=torch.float64),
                                     P.repeat_interleave(u.group_size)])
    return out


def gated_pair(arch, prob_type, seed=3):
    model, mut = mutator_for(arch, prob_type=prob_type)
    randomize(model, np.random.default_rng(seed))
    set_random_alphas(mut, np.random.default_rng(seed + 1), prob_type)
    ref = RefClassifier(arch, 10 if arch == "cifar20" else 1000, SHAPES[arch][0])
    copy_to_ref(model, ref)
    return model, mut, ref


@pytest.mark.parametrize("arch,prob_type,size", [("cifar20", "sigmoid", 16), ("cifar20", "exp", 16),
                                                 ("mbv2", "exp", 32), ("mbv2", "sigmoid", 32)])
def test_gated_forward_backward_match_autograd(arch, prob_type, size, close):
    model, mut, ref = gated_pair(arch, prob_type)
    rng = np.random.default_rng(12)
    x = rng.normal(size=(2, SHAPES[arch][0], size, size)).astype(np.float32)
    labels = np.array([1, 7])
    mut.set_widths("random", rng=np.random.default_rng(0))
    mut.set_gates(True)
    assert all(u.width == u.num_channels for u in mut.units), "gates run the full width"
    model.eval()
    model.zero_grad()
    mut.zero_alpha_grad()
    ce = model.loss_module
    alphas = torch_alphas(mut)
    ref.ctx.gates = gate_vectors(mut, alphas, prob_type)
    ref.eval()
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    logits, want = ref_forward(model, x, ref, xt)
    loss = ce.forward(logits, labels)
    dx = model.backward(ce.backward())
    mut.alpha_backward()
    wl = F.cross_entropy(want, torch.from_numpy(labels))
    wl.backward()
    fam = f"gated {arch} {prob_type}"
    close(logits, want.detach().numpy(), f"{fam} logits", rtol=1e-5, atol=1e-7)
    assert loss == pytest.approx(wl.detach().item(), rel=1e-5)
    close(dx, xt.grad.numpy(), f"{fam} input grad", rtol=1e-4, atol=1e-10)
    for u in mut.units:
        if u.ngroups:
            close(u.alpha.grad, alphas[u.name].grad.numpy(), f"{fam} dalpha", rtol=1e-4, atol=1e-9)
    params = dict(model.named_parameters())
    for name, p in ref.named_parameters():
        close(params[name].grad, p.grad.numpy(), f"{fam} param grads", rtol=1e-4, atol=1e-9)
    # the gates really scale: switching them off changes the logits
    mut.set_gates(False)
    assert not np.allclose(model(x), logits, rtol=1e-3)
    mut.zero_alpha_grad()
    model.backward(ce.backward())
    mut.alpha_backward()
    assert not any(p.grad.any() for p in mut.arch_parameters()), "no alpha gradient with gates off"


def test_gated_alpha_gradient_vs_finite_differences():
    model, mut, _ = gated_pair("cifar20", "sigmoid")
    rng = np.random.default_rng(12)
    x = rng.normal(size=(2, 1, 16, 16)).astype(np.float32)
    labels = np.array([3, 5])
    model.eval()
    ce = model.loss_module

    def loss_at():
        mut.set_gates(True)
        return ce.forward(model(x), labels)

    mut.zero_alpha_grad()
    loss_at()
    model.backward(ce.backward())
    mut.alpha_backward()
    units = [u for u in mut.units if u.ngroups]
    picks = sorted(((abs(float(u.alpha.grad[k])), i, k) for i, u in enumerate(units)
                    for k in range(u.ngroups)), reverse=True)[:4]
    for _, i, k in picks:
        u = units[i]
        a0 = u.alpha.data[k]
        u.alpha.data[k] = a0 + np.float32(0.05)
        lp, hp = loss_at(), u.alpha.data[k]
        u.alpha.data[k] = a0 - np.float32(0.05)
        lm, hm = loss_at(), u.alpha.data[k]
        u.alpha.data[k] = a0
        fd = (lp - lm) / (float(hp) - float(hm))
        assert u.alpha.grad[k] == pytest.approx(fd, rel=0.03), f"{u.name}[{k}]"


@pytest.mark.parametrize("arch,prob_type", [("cifar20", "sigmoid"), ("cifar20", "exp"),
                                             ("mbv2", "sigmoid"), ("mbv2", "exp")])
def test_arch_step_gradient_is_task_plus_budget(arch, prob_type, close):
    """algorithm.arch_step against PyTorch autograd of the paper's formulas: BN outputs
    times the cumulative keep probabilities (residual units tied), full width, BN
    frozen, cross-entropy plus the weighted log_l1 budget loss of E[F].  Alphas lie on
    both sides of 0 and some exactly at 0, where every search starts.  Weights are
    untouched; gates off and train mode afterwards."""
    c, size = SHAPES[arch][0], 16
    shape = (c, size, size)
    model = dmcp.build_model(dmcp_cfg(arch, prob_type=prob_type, shape=shape, weight=0.1))
    mut, net = model.mutator, model.architecture
    randomize(net, np.random.default_rng(3))
    set_random_alphas(mut, np.random.default_rng(4), prob_type)
    zeros = 0
    for u in mut.units:
        if u.ngroups:
            u.alpha.data[::3] = 0.0
            zeros += len(u.alpha.data[::3])
    target = model.target_mflops = 0.6 * model.expected_mflops()
    ref = RefClassifier(arch, 10 if arch == "cifar20" else 1000, c)
    copy_to_ref(net, ref)
    rng = np.random.default_rng(12)
    x = rng.normal(size=(2,) + shape).astype(np.float32)
    labels = np.array([2, 9])
    alphas = torch_alphas(mut)
    ref.ctx.gates = gate_vectors(mut, alphas, prob_type)
    ref.eval()

    class Capture:
        def step(self):
            self.grads = {u.name: u.alpha.grad.copy() for u in mut.units if u.ngroups}

    before = {k: np.array(v, copy=True) for k, v in net.state_dict().items()}
    net.train()
    opt = Capture()
    # run the step with the ReLU regions recorded, then the reference in them
    with relu_masks() as masks:
        stats = arch_step(model, opt, x, labels, SingleProcess())
    ref.ctx.masks = masks
    want = ref(torch.from_numpy(x.astype(np.float64)))
    ref.ctx.masks = None
    task = F.cross_entropy(want, torch.from_numpy(labels))
    e = torch_expected_flops(ref, shape, mut, alphas, prob_type) / 1e6
    assert 0.95 * target < e.detach().item() < 0.95 * target + 200.0
    budget = 0.1 * torch.log(torch.abs(e - 0.95 * target))
    (task + budget).backward()
    assert stats["expected_mflops"] == pytest.approx(e.detach().item(), rel=1e-6)
    assert stats["arch_loss"] == pytest.approx((task + budget).detach().item(), rel=1e-5)
    at_zero = 0
    for name, g in opt.grads.items():
        close(g, alphas[name].grad.numpy(), f"arch step dalpha {arch} {prob_type}", rtol=1e-4,
              atol=1e-9)
        a = alphas[name].detach().numpy()
        at_zero += int(np.count_nonzero(g[a == 0.0]))
    assert zeros > 0 and at_zero > zeros // 2, "alphas at exactly 0 receive gradient"
    assert not any(u.gate_on for u in mut.units)
    assert all(m.training for _, m in net.named_modules())
    for k, v in net.state_dict().items():
        assert np.array_equal(v, before[k]), f"{k} changed by the architecture step"
    assert not any(p.grad.any() for p in net.parameters())
    assert all(p.requires_grad for p in net.parameters())


def test_arch_step_keeps_weight_gradients_of_the_sandwich():
    """The architecture step computes no weight gradient: what the weights held
    before it (say, the sandwich's) is left as it was, then cleared as before."""
    model = dmcp.build_model(dmcp_cfg("cifar20", shape=(1, 16, 16), target=1.0, weight=0.1))
    net = model.architecture
    x = np.random.default_rng(1).normal(size=(2, 1, 16, 16)).astype(np.float32)
    seen = []
    orig = net.backward

    def backward(g, need_dinp=True):
        r = orig(g, need_dinp)
        seen.append([p.grad.copy() for p in net.parameters()])
        return r

    net.backward = backward
    marker = [np.full_like(p.grad, 0.5) for p in net.parameters()]
    for p, m in zip(net.parameters(), marker):
        p.grad[...] = m
    arch_step(model, dmcp.nn.Adam(model.mutator.arch_parameters(), lr=0.1), x, np.array([1, 2]),
              SingleProcess())
    assert len(seen) == 1
    for got, want in zip(seen[0], marker):
        assert np.array_equal(got, want)
    assert any(u.alpha.grad.any() for u in model.mutator.units if u.ngroups)


# ---------------------------------------------------------------------------
# width modes (DMCP.md section 6)
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["cifar20", "mbv2"])
@pytest.mark.parametrize("prob_type", ["sigmoid", "exp"])
def test_width_modes_stay_on_candidates(arch, prob_type):
    model, mut = mutator_for(arch, prob_type=prob_type)
    set_random_alphas(mut, np.random.default_rng(1), prob_type)
    rng = np.random.default_rng(2)
    for mode in ["max", "min", "random", "direct", "expected"]:
        for _ in range(5 if mode in ("random", "direct") else 1):
            mut.set_widths(mode, rng=rng)
            for u in mut.units:
                assert u.width in u.candidates(), (mode, u.name, u.width)
    mut.set_widths("max")
    assert all(u.width == u.num_channels for u in mut.units)
    mut.set_widths("min")
    assert all(u.width == u.min_ch for u in mut.units)
    # expected: E[c] rounded to the nearest candidate
    ec = mut.expected_channels()
    mut.set_widths("expected")
    for u in mut.units:
        if u.ngroups:
            near = min(u.candidates(), key=lambda c: abs(c - ec[u.name]))
            assert u.width == near, u.name
    # choice by unit name and by key
    choices = {}
    for i, u in enumerate(mut.units):
        c = u.candidates()[i % len(u.candidates())]
        choices[u.key if i % 2 else u.name] = c
    mut.set_widths("choice", choices=choices)
    assert [u.width for u in mut.units] == list(choices.values())
    with pytest.raises(UserError, match="width mode"):
        mut.set_widths("biggest")


@pytest.mark.parametrize("prob_type,full,empty", [("sigmoid", 30.0, -30.0), ("exp", -1.0, 40.0)])
def test_direct_sampling_limits(prob_type, full, empty):
    model, mut = mutator_for("mbv2", prob_type=prob_type)
    rng = np.random.default_rng(0)
    for u in mut.units:
        u.alpha.data[...] = full
    for _ in range(3):
        mut.set_widths("direct", rng=rng)
        assert all(u.width == u.num_channels for u in mut.units)
    for u in mut.units:
        u.alpha.data[...] = empty
    for _ in range(3):
        mut.set_widths("direct", rng=rng)
        assert all(u.width == u.min_ch for u in mut.units)


def test_direct_sampling_follows_the_markov_chain():
    """P(width >= m + (k+1) g) = P_k: the empirical marginals of 'direct' draws."""
    model, mut = mutator_for("cifar20", prob_type="sigmoid")
    u = mut.units[-1]
    u.alpha.data[...] = np.linspace(2.0, -1.0, u.ngroups)
    u.compute_probs(0)
    P = u.P.astype(np.float64)
    rng = np.random.default_rng(42)
    draws = 3000
    kept = np.empty(draws, int)
    for i in range(draws):
        mut.set_widths("direct", rng=rng)
        kept[i] = (u.width - u.min_ch) // u.group_size
    for k in range(u.ngroups):
        freq = np.mean(kept >= k + 1)
        sd = math.sqrt(P[k] * (1 - P[k]) / draws)
        assert abs(freq - P[k]) < 4 * sd + 1e-3, (k, freq, P[k])


def test_set_gates_restores_full_width_and_computes_P():
    model, mut = mutator_for("cifar20", prob_type="exp")
    set_random_alphas(mut, np.random.default_rng(1), "exp")
    mut.set_widths("min")
    mut.set_gates(True)
    for u in mut.units:
        assert u.width == u.num_channels
        assert u.gate_on == (u.ngroups > 0)
        if u.ngroups:
            p = np.exp(-np.maximum(u.alpha.data.astype(np.float64), 0))
            np.testing.assert_allclose(u.P, np.cumprod(p), rtol=1e-6)
    mut.set_gates(False)
    assert not any(u.gate_on for u in mut.units)


# ---------------------------------------------------------------------------
# fix-subnet JSON (INTERFACES.md)
# ---------------------------------------------------------------------------

def subnet_model(arch="cifar20", seed=0):
    model, mut = mutator_for(arch, cfg=(0.1, 1.0, 0.05), prob_type="exp", seed=seed)
    randomize(model, np.random.default_rng(6))
    mut.set_widths("random", rng=np.random.default_rng(33))
    return model, mut


@pytest.mark.parametrize("arch", ["cifar20", "mbv2", "resnet18"])
def test_export_apply_roundtrip(arch, tmp_path):
    model, mut = subnet_model(arch)
    widths = mut.widths()
    shape = (1, 1, 28, 28) if arch == "cifar20" else (1, 3, 224, 224)
    sub = mut.export_subnet(shape)
    text = json.dumps(sub)
    d = json.loads(text)
    assert d["type"] == "DMCPChannelMutator"
    assert d["channel_unit_cfg"]["type"] == "DMCPChannelUnit"
    assert d["channel_unit_cfg"]["default_args"] == {"choice_mode": "number"}
    assert d["parse_cfg"]["demo_input"] == list(shape)
    units = d["channel_unit_cfg"]["units"]
    assert len(units) == len(mut.units)
    for u in mut.units:
        entry = units[f"{u.name}_(0, {u.num_channels})_{u.num_channels}"]
        assert entry["choice"] == widths[u.name]
        assert entry["init_args"] == {"num_channels": u.num_channels, "choice_mode": "number",
                                      "divisor": 1, "min_value": 1, "min_ratio": 0.5}
    # onto a fresh supernet: from the dict and from a file
    for src in (d, str(tmp_path / "sub.json")):
        (tmp_path / "sub.json").write_text(text)
        fresh_model, fresh = mutator_for(arch, cfg=(0.1, 1.0, 0.05), prob_type="exp", seed=1)
        assert fresh.widths() != widths
        with warnings.catch_warnings():
            warnings.simplefilter("error")          # every unit is given: no warning
            got = apply_subnet(fresh, src)
        assert got == widths and fresh.widths() == widths


@pytest.mark.parametrize("arch", ["cifar20", "mbv2"])
def test_build_pruned_equals_supernet_at_those_widths(arch, tmp_path, close):
    model, mut = subnet_model(arch)
    shape = (1, 28, 28) if arch == "cifar20" else (3, 32, 32)
    path = tmp_path / "fix_subnet.json"
    path.write_text(json.dumps(mut.export_subnet((1,) + shape)))
    pruned = build_pruned(classifier_cfg(arch), str(path), supernet=model)
    widths = mut.widths()
    assert {u.name: u.num_channels for u in pruned.units.values()} == widths
    # every array is the leading slice of the supernet's
    sup = model.state_dict()
    for k, v in pruned.state_dict().items():
        sl = tuple(slice(0, d) for d in np.shape(v))
        np.testing.assert_array_equal(v, np.asarray(sup[k])[sl] if np.ndim(v) else sup[k], err_msg=k)
    x = np.random.default_rng(1).normal(size=(2,) + shape).astype(np.float32)
    model.eval()
    pruned.eval()
    close(pruned(x), model(x), f"pruned vs supernet {arch}", rtol=1e-6, atol=1e-7)
    assert dmcp.count_flops(pruned, shape)["flops"] == dmcp.count_flops(model, shape)["flops"]
    assert dmcp.count_flops(pruned, shape)["flops"] == mut.current_flops(shape)
    # and as a 'sub_model' config
    sub = dmcp.build_model(dict(type="sub_model", cfg=classifier_cfg(arch), fix_subnet=str(path),
                                mode="mutator"))
    assert {u.name: u.num_channels for u in sub.units.values()} == widths


def test_build_pruned_from_a_dmcp_supernet(close):
    """The supernet may be the DMCP algorithm model itself (what build_model(cfg.model)
    returns); its architecture parameters are not weights of the pruned network."""
    shape = (1, 28, 28)
    model = dmcp.build_model(dmcp_cfg("cifar20", prob_type="exp", shape=shape, pruning=(0.1, 1.0, 0.05)))
    randomize(model.architecture, np.random.default_rng(6))
    model.mutator.set_widths("random", rng=np.random.default_rng(5))
    sub = model.mutator.export_subnet((1,) + shape)
    pruned = build_pruned(classifier_cfg("cifar20"), sub, supernet=model)
    x = np.random.default_rng(1).normal(size=(2,) + shape).astype(np.float32)
    model.eval()
    pruned.eval()
    close(pruned(x), model(x), "pruned vs DMCP supernet", rtol=1e-6, atol=1e-7)


def _bad(mut, edit):
    d = mut.export_subnet((1, 1, 28, 28))
    edit(d["channel_unit_cfg"]["units"])
    return d


UNIT = "backbone.layer2.0.conv1"
KEY = f"{UNIT}_(0, 32)_32"


@pytest.mark.parametrize("edit,words", [
    (lambda u: u[KEY].__setitem__("choice", 33), [KEY, "33", "32"]),
    (lambda u: u[KEY].__setitem__("choice", 0), [KEY, "0", "32"]),
    (lambda u: u[KEY].__setitem__("choice", -4), [KEY, "-4"]),
    (lambda u: u[KEY].__setitem__("choice", 12.5), [KEY, "12.5"]),
    (lambda u: u.__setitem__("backbone.layer9.0.conv1_(0, 32)_32", {"choice": 8}),
     ["backbone.layer9.0.conv1"]),
    (lambda u: u[KEY]["init_args"].__setitem__("num_channels", 48), [KEY, "48", "32"]),
    (lambda u: u[KEY].pop("choice"), [KEY, "choice"]),
])
def test_bad_fix_subnet_is_a_user_error(edit, words, tmp_path):
    model, mut = subnet_model()
    d = _bad(mut, edit)
    with pytest.raises(UserError) as e:
        apply_subnet(mut, d)
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(d))
    with pytest.raises(UserError) as e:
        build_pruned(classifier_cfg("cifar20"), str(path))
    for w in words:
        assert w in str(e.value), (w, str(e.value))


@pytest.mark.parametrize("text", ['{"type": "DMCPChannelMutator", "channel_unit_cfg": {',
                                  "not json at all", "[1, 2, 3]", "{}"])
def test_malformed_fix_subnet_file(text, tmp_path):
    model, mut = subnet_model()
    path = tmp_path / "broken.json"
    path.write_text(text)
    for fn in (lambda: apply_subnet(mut, str(path)),
               lambda: build_pruned(classifier_cfg("cifar20"), str(path))):
        with pytest.raises(UserError) as e:
            fn()
        assert "broken.json" in str(e.value)


@pytest.mark.parametrize("d", [
    {"type": "DMCPChannelMutator", "channel_unit_cfg": 5},
    {"channel_unit_cfg": {"units": {"backbone.conv1_(0, 16)_16": {"choice": 8, "init_args": 16}}}},
    {"channel_unit_cfg": {"units": ["backbone.conv1_(0, 16)_16", 8]}},
], ids=["cfg-not-a-dict", "init_args-not-a-dict", "units-a-list"])
def test_malformed_fix_subnet_structure(d, tmp_path):
    """Valid JSON of the wrong shape is a user error too, not an AttributeError."""
    model, mut = subnet_model()
    path = tmp_path / "odd.json"
    path.write_text(json.dumps(d))
    for fn in (lambda: apply_subnet(mut, str(path)),
               lambda: build_pruned(classifier_cfg("cifar20"), str(path))):
        with pytest.raises(UserError) as e:
            fn()
        assert "odd.json" in str(e.value)


def test_missing_fix_subnet_file(tmp_path):
    model, mut = subnet_model()
    path = str(tmp_path / "nope.json")
    for fn in (lambda: apply_subnet(mut, path), lambda: build_pruned(classifier_cfg("cifar20"), path)):
        with pytest.raises(UserError) as e:
            fn()
        assert "nope.json" in str(e.value) and "not exist" in str(e.value)


def test_missing_units_warn_and_stay_full(tmp_path):
    model, mut = subnet_model()
    d = mut.export_subnet((1, 1, 28, 28))
    units = d["channel_unit_cfg"]["units"]
    dropped = [u for u in mut.units if u.width < u.num_channels][:2]
    for u in dropped:
        del units[u.key]
    fresh_model, fresh = mutator_for("cifar20", cfg=(0.1, 1.0, 0.05), prob_type="exp")
    fresh.set_widths("min")
    with pytest.warns(UserWarning, match=dropped[0].name):
        widths = apply_subnet(fresh, d)
    for u in fresh.units:
        want = u.num_channels if u.name in {x.name for x in dropped} else mut.widths()[u.name]
        assert widths[u.name] == want
    path = tmp_path / "partial.json"
    path.write_text(json.dumps(d))
    with pytest.warns(UserWarning, match=dropped[0].name):
        pruned = build_pruned(classifier_cfg("cifar20"), str(path))
    for u in dropped:
        assert pruned.units[u.name].num_channels == u.num_channels
