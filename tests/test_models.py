"""Models (dmcp/models.py) against PyTorch references written here with the
same architecture and mmcls key names: logits, input and parameter gradients,
BN running statistics (eval and train mode), channel units, FLOPs/params
counts, and channel-sliced subnets against dense smaller PyTorch models.

The reference models run in float64 and take optional per-unit widths (a dense
pruned model) and optional per-unit gate vectors (the DMCP architecture step),
so tests/test_units.py reuses them.
"""
import collections
import contextlib
import functools
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn as tnn
import torch.nn.functional as F

import dmcp
from dmcp.nn import BatchNorm2d

torch.set_num_threads(2)

# ---------------------------------------------------------------------------
# reference models (PyTorch, mmcls names)
# ---------------------------------------------------------------------------


class Ctx:
    """Shared by every layer of one reference model: the width of each unit
    (dense pruned model), the gate vector of each unit (architecture step),
    and, per conv/linear, (in unit or None, out unit or None, depthwise)."""

    def __init__(self, widths):
        self.widths = dict(widths or {})
        self.unit_channels = {}             # unit name -> full channel count
        self.gates = {}                     # unit name -> tensor (C,) or absent
        self.layer_units = {}               # module name -> (in_unit, out_unit, depthwise)
        self.masks = None                   # dmcp's ReLU regions, in call order (see relu_masks)

    def unit(self, name, channels):
        self.unit_channels[name] = channels
        return self.widths.get(name, channels)

    def relu(self, x, cap=0.0):
        """ReLU / ReLU6; with ``masks`` set, in the linear region dmcp's float32
        run took (a pre-activation within rounding of 0 or 6 would otherwise
        flip the mask and spread an O(1) difference through BN's statistics)."""
        if self.masks is None:
            return F.relu6(x) if cap else F.relu(x)
        mid, hi = self.masks.popleft()
        assert mid.shape == tuple(x.shape), f"ReLU order differs: {mid.shape} vs {tuple(x.shape)}"
        # the regions may differ from the reference's own only within rounding of a boundary
        xv = x.detach().numpy()
        own_mid = (xv > 0) & (xv < cap) if cap else xv > 0
        edge = np.minimum(np.abs(xv), np.abs(xv - cap)) if cap else np.abs(xv)
        bad = (mid != own_mid) & (edge > 1e-4 * max(float(np.abs(xv).max()), 1.0))
        assert not bad.any(), f"dmcp's ReLU region differs at {int(bad.sum())} values away from the kink"
        out = x * torch.from_numpy(mid.astype(np.float64))
        return out + cap * torch.from_numpy(hi.astype(np.float64)) if cap else out

    def gate(self, x, unit):
        g = self.gates.get(unit)
        return x if g is None else x * g[: x.shape[1]].view(1, -1, 1, 1)


@contextlib.contextmanager
def relu_masks():
    """Record, per dmcp ReLU/ReLU6 (standalone, fused into BN or into a residual add), where the output is in the linear
    region (0 < out < cap) and where it is capped, for Ctx.relu."""
    masks = collections.deque()
    orig_relu, orig_bn = dmcp.nn.ReLU.forward, dmcp.nn.BatchNorm2d.forward

    def record(out, cap):
        if cap:
            masks.append(((out > 0) & (out < cap), out >= cap))
        else:
            masks.append((out > 0, None))
        return out

    def relu_forward(self, x):
        return record(orig_relu(self, x), self.cap)

    def bn_forward(self, x, gate=None, act=None):      # BN with a fused activation
        out = orig_bn(self, x, gate, act)
        return out if act is None else record(out, act)

    def block_forward(self, x):                         # residual add fused with ReLU
        return record(orig_block(self, x), 0.0)

    block = dmcp.models._ResidualBlock
    orig_block = block.forward
    dmcp.nn.ReLU.forward, dmcp.nn.BatchNorm2d.forward = relu_forward, bn_forward
    block.forward = block_forward
    try:
        yield masks
    finally:
        dmcp.nn.ReLU.forward, dmcp.nn.BatchNorm2d.forward = orig_relu, orig_bn
        block.forward = orig_block


def ref_forward(model_fn, x, ref, xt=None):
    """dmcp forward of x (recording its ReLU regions), then the reference
    forward of xt (default: x in float64) in the same regions.
    Returns (dmcp out, reference out)."""
    if xt is None:
        xt = torch.from_numpy(np.asarray(x, np.float64))
    with relu_masks() as masks:
        got = model_fn(x)
    ref.ctx.masks = masks
    try:
        want = ref(xt)
        assert not masks, f"{len(masks)} dmcp ReLU calls without a reference counterpart"
    finally:
        ref.ctx.masks = None
    return got, want


def _conv(cin, cout, k, stride=1, padding=0, groups=1):
    return tnn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=False)


class RefBasicBlock(tnn.Module):
    def __init__(self, ctx, prefix, in_unit, res_unit, cin, planes, cout, stride, down):
        super().__init__()
        self.ctx, self.u1, self.res = ctx, f"{prefix}.conv1", res_unit
        w1 = ctx.unit(self.u1, planes)
        self.conv1 = _conv(cin, w1, 3, stride, 1)
        self.bn1 = tnn.BatchNorm2d(w1)
        self.conv2 = _conv(w1, cout, 3, 1, 1)
        self.bn2 = tnn.BatchNorm2d(cout)
        ctx.layer_units[f"{prefix}.conv1"] = (in_unit, self.u1, False)
        ctx.layer_units[f"{prefix}.conv2"] = (self.u1, res_unit, False)
        self.downsample = None
        if down:
            self.downsample = tnn.Sequential(_conv(cin, cout, 1, stride), tnn.BatchNorm2d(cout))
            ctx.layer_units[f"{prefix}.downsample.0"] = (in_unit, res_unit, False)

    def forward(self, x):
        g = self.ctx.gate
        r = self.ctx.relu
        out = r(g(self.bn1(self.conv1(x)), self.u1))
        out = g(self.bn2(self.conv2(out)), self.res)
        idt = g(self.downsample(x), self.res) if self.downsample is not None else x
        return r(out + idt)


class RefBottleneck(tnn.Module):
    def __init__(self, ctx, prefix, in_unit, res_unit, cin, planes, cout, stride, down):
        super().__init__()
        self.ctx, self.u1, self.u2, self.res = ctx, f"{prefix}.conv1", f"{prefix}.conv2", res_unit
        w1, w2 = ctx.unit(self.u1, planes), ctx.unit(self.u2, planes)
        self.conv1 = _conv(cin, w1, 1)
        self.bn1 = tnn.BatchNorm2d(w1)
        self.conv2 = _conv(w1, w2, 3, stride, 1)            # style='pytorch'
        self.bn2 = tnn.BatchNorm2d(w2)
        self.conv3 = _conv(w2, cout, 1)
        self.bn3 = tnn.BatchNorm2d(cout)
        ctx.layer_units[f"{prefix}.conv1"] = (in_unit, self.u1, False)
        ctx.layer_units[f"{prefix}.conv2"] = (self.u1, self.u2, False)
        ctx.layer_units[f"{prefix}.conv3"] = (self.u2, res_unit, False)
        self.downsample = None
        if down:
            self.downsample = tnn.Sequential(_conv(cin, cout, 1, stride), tnn.BatchNorm2d(cout))
            ctx.layer_units[f"{prefix}.downsample.0"] = (in_unit, res_unit, False)

    def forward(self, x):
        g = self.ctx.gate
        r = self.ctx.relu
        out = r(g(self.bn1(self.conv1(x)), self.u1))
        out = r(g(self.bn2(self.conv2(out)), self.u2))
        out = g(self.bn3(self.conv3(out)), self.res)
        idt = g(self.downsample(x), self.res) if self.downsample is not None else x
        return r(out + idt)


class RefResNetBackbone(tnn.Module):
    ARCH = {18: (RefBasicBlock, 1, (2, 2, 2, 2)), 34: (RefBasicBlock, 1, (3, 4, 6, 3)),
            50: (RefBottleneck, 4, (3, 4, 6, 3))}

    def __init__(self, ctx, depth, in_channels, small_input):
        super().__init__()
        self.ctx, self.small_input = ctx, small_input
        if small_input:                     # mmcls ResNet_CIFAR: 3x3 s1 stem, no max-pool
            block, exp, blocks = RefBasicBlock, 1, ((depth - 2) // 6,) * 3
            base = 16
        else:
            block, exp, blocks = self.ARCH[depth]
            base = 64
        self.stem_unit = "backbone.conv1"
        ws = ctx.unit(self.stem_unit, base)
        if small_input:
            self.conv1 = _conv(in_channels, ws, 3, 1, 1)
        else:
            self.conv1 = _conv(in_channels, ws, 7, 2, 3)
        self.bn1 = tnn.BatchNorm2d(ws)
        ctx.layer_units["backbone.conv1"] = (None, self.stem_unit, False)
        in_unit, inplanes, cin = self.stem_unit, base, ws
        for s, n in enumerate(blocks):
            planes, stride = base * 2 ** s, (1 if s == 0 else 2)
            out_planes = planes * exp
            down = stride != 1 or inplanes != out_planes
            if down:
                res_unit = f"backbone.layer{s + 1}.0.conv{3 if exp == 4 else 2}"
                cout = ctx.unit(res_unit, out_planes)
            else:
                res_unit, cout = in_unit, cin
            layer = []
            for b in range(n):
                layer.append(block(ctx, f"backbone.layer{s + 1}.{b}", in_unit, res_unit, cin,
                                   planes, cout, stride if b == 0 else 1, down and b == 0))
                in_unit, cin = res_unit, cout
            setattr(self, f"layer{s + 1}", tnn.Sequential(*layer))
            inplanes = out_planes
        self.nstages = len(blocks)
        self.out_unit, self.out_channels = in_unit, cin

    def forward(self, x):
        x = self.ctx.relu(self.ctx.gate(self.bn1(self.conv1(x)), self.stem_unit))
        if not self.small_input:
            x = F.max_pool2d(x, 3, 2, 1)
        for s in range(self.nstages):
            x = getattr(self, f"layer{s + 1}")(x)
        return x


class RefConvModule(tnn.Module):
    """mmcv ConvModule: conv -> bn (-> gate) -> ReLU6 (optional)."""

    def __init__(self, ctx, name, in_unit, unit, cin, cout, k, stride=1, padding=0, act=True,
                 depthwise=False):
        super().__init__()
        self.ctx, self.unit_name, self.act = ctx, unit, act
        self.conv = _conv(cin, cout, k, stride, padding, groups=cout if depthwise else 1)
        self.bn = tnn.BatchNorm2d(cout)
        ctx.layer_units[f"{name}.conv"] = (in_unit, unit, depthwise)

    def forward(self, x):
        x = self.ctx.gate(self.bn(self.conv(x)), self.unit_name)
        return self.ctx.relu(x, 6.0) if self.act else x


class RefInvertedResidual(tnn.Module):
    def __init__(self, ctx, prefix, in_unit, out_unit, cin, cout, stride, t, use_res):
        super().__init__()
        self.use_res = use_res
        mods = []
        if t != 1:
            hidden_unit = f"{prefix}.conv.0.conv"
            hid = ctx.unit(hidden_unit, int(round(ctx.unit_channels[in_unit] * t)))
            mods.append(RefConvModule(ctx, f"{prefix}.conv.0", in_unit, hidden_unit, cin, hid, 1))
        else:
            hidden_unit, hid = in_unit, cin
        j = len(mods)
        mods.append(RefConvModule(ctx, f"{prefix}.conv.{j}", hidden_unit, hidden_unit, hid, hid, 3,
                                  stride, 1, depthwise=True))
        mods.append(RefConvModule(ctx, f"{prefix}.conv.{j + 1}", hidden_unit, out_unit, hid, cout, 1,
                                  act=False))
        self.conv = tnn.Sequential(*mods)

    def forward(self, x):
        out = self.conv(x)
        return x + out if self.use_res else out


class RefMobileNetV2Backbone(tnn.Module):
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, ctx, in_channels=3):
        super().__init__()
        stem = "backbone.conv1.conv"
        ws = ctx.unit(stem, 32)
        self.conv1 = RefConvModule(ctx, "backbone.conv1", None, stem, in_channels, ws, 3, 2, 1)
        in_unit, cin = stem, ws
        for s, (t, c, n, stride) in enumerate(self.SETTINGS):
            prefix = f"backbone.layer{s + 1}"
            out_unit = f"{prefix}.0.conv.{1 if t == 1 else 2}.conv"
            cout = ctx.unit(out_unit, c)
            blocks = []
            for b in range(n):
                blocks.append(RefInvertedResidual(ctx, f"{prefix}.{b}", in_unit, out_unit, cin, cout,
                                                  stride if b == 0 else 1, t, use_res=b > 0))
                in_unit, cin = out_unit, cout
            setattr(self, f"layer{s + 1}", tnn.Sequential(*blocks))
        last = "backbone.conv2.conv"
        wl = ctx.unit(last, 1280)
        self.conv2 = RefConvModule(ctx, "backbone.conv2", in_unit, last, cin, wl, 1)
        self.out_unit, self.out_channels = last, wl

    def forward(self, x):
        x = self.conv1(x)
        for s in range(7):
            x = getattr(self, f"layer{s + 1}")(x)
        return self.conv2(x)


class RefHead(tnn.Module):
    def __init__(self, cin, num_classes):
        super().__init__()
        self.fc = tnn.Linear(cin, num_classes)


class RefClassifier(tnn.Module):
    """backbone -> global average pooling -> head.fc, float64."""

    def __init__(self, arch, num_classes=1000, in_channels=3, widths=None):
        super().__init__()
        self.ctx = Ctx(widths)
        if arch == "mbv2":
            self.backbone = RefMobileNetV2Backbone(self.ctx, in_channels)
        elif arch == "cifar20":
            self.backbone = RefResNetBackbone(self.ctx, 20, in_channels, small_input=True)
        else:
            self.backbone = RefResNetBackbone(self.ctx, int(arch[6:]), in_channels, small_input=False)
        self.head = RefHead(self.backbone.out_channels, num_classes)
        self.ctx.layer_units["head.fc"] = (self.backbone.out_unit, None, False)
        self.double()

    def forward(self, x):
        return self.head.fc(self.backbone(x).mean(dim=(2, 3)))


DMCP_CFG = {
    "resnet18": dict(backbone=dict(type="ResNet", depth=18), num_classes=1000),
    "resnet50": dict(backbone=dict(type="ResNet", depth=50), num_classes=1000),
    "mbv2": dict(backbone=dict(type="MobileNetV2", widen_factor=1.0), num_classes=1000),
    "cifar20": dict(backbone=dict(type="ResNet_CIFAR", depth=20, in_channels=1), num_classes=10),
}
IN_CHANNELS = {"resnet18": 3, "resnet50": 3, "mbv2": 3, "cifar20": 1}


def classifier_cfg(arch, num_classes=None):
    c = DMCP_CFG[arch]
    return dict(type="ImageClassifier", backbone=dict(c["backbone"]),
                neck=dict(type="GlobalAveragePooling"),
                head=dict(type="LinearClsHead", num_classes=num_classes or c["num_classes"]))


def build_dmcp(arch, seed=0):
    return dmcp.build_model(classifier_cfg(arch), seed=seed)


@functools.lru_cache(maxsize=None)
def shared_dmcp(arch):
    """One model per architecture for tests that only read it (names, counts)."""
    return build_dmcp(arch)


@functools.lru_cache(maxsize=None)
def shared_ref(arch):
    return RefClassifier(arch, NUM_CLASSES[arch], IN_CHANNELS[arch])


def randomize(model, rng):
    """BN affine parameters, running statistics and fc bias away from their
    initial values (zero-init residual would hide every block's gradients)."""
    for _, m in model.named_modules():
        if isinstance(m, BatchNorm2d):
            c = m.num_features
            m.weight.data[...] = rng.uniform(0.5, 1.5, c)
            m.bias.data[...] = rng.normal(0.0, 0.2, c)
            m.running_mean[...] = rng.normal(0.0, 0.2, c)
            m.running_var[...] = rng.uniform(0.5, 2.0, c)
            m.num_batches_tracked[...] = rng.integers(0, 100)
    model.head.fc.bias.data[...] = rng.normal(0.0, 0.1, model.head.fc.bias.shape)


def copy_to_ref(model, ref):
    """Every reference tensor from the dmcp array of the same name, sliced to
    the reference's (possibly smaller) shape: the first channels of each dim."""
    sd = model.state_dict()
    new = {}
    for k, v in ref.state_dict().items():
        assert k in sd, f"reference key {k} missing from the dmcp state dict"
        src = np.asarray(sd[k])
        src = src[tuple(slice(0, d) for d in v.shape)] if v.ndim else src
        new[k] = torch.from_numpy(np.array(src, dtype=np.float64 if v.is_floating_point() else np.int64))
    ref.load_state_dict(new)


def run_pair(model, ref, x, dlogits, train):
    """Forward + backward both; returns (logits, dx) for dmcp and the reference."""
    model.train(train)
    ref.train(train)
    model.zero_grad()
    ref.zero_grad()
    xt = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    got, want = ref_forward(model, x, ref, xt)
    gdx = model.backward(dlogits)
    (want * torch.from_numpy(dlogits.astype(np.float64))).sum().backward()
    return got, gdx, want.detach().numpy(), xt.grad.numpy()


def check_grads(close, family, model, ref, rtol):
    """Every reference parameter gradient against dmcp's, one layer at a time
    (a BN's weight and bias together: a bias feeding a train-mode BN through a
    linear layer has an exact gradient of 0, so its own scale means nothing).
    Where the reference is smaller than the dmcp supernet, the dmcp gradient
    outside the leading slice must be exactly zero."""
    params = dict(model.named_parameters())
    layers = {}
    for name, p in ref.named_parameters():
        layers.setdefault(name.rpartition(".")[0], []).append((name, p))
    for layer, items in layers.items():
        got, want = [], []
        for name, p in items:
            g = params[name].grad
            sl = tuple(slice(0, d) for d in p.shape)
            got.append(g[sl].ravel())
            want.append(p.grad.numpy().ravel())
            if g.shape != tuple(p.shape):
                rest = g.copy()
                rest[sl] = 0.0
                assert not rest.any(), f"{name}: gradient outside the active channels"
        close(np.concatenate(got), np.concatenate(want), f"{family} param grads", rtol=rtol, atol=1e-7)


def check_running_stats(close, family, model, ref, rtol=1e-4):
    sd = model.state_dict()
    for name, b in ref.named_buffers():
        got = np.asarray(sd[name])
        sl = tuple(slice(0, d) for d in b.shape)
        if name.endswith("num_batches_tracked"):
            assert int(got) == int(b), name
        else:
            close(got[sl], b.numpy(), f"{family} running stats", rtol=rtol, atol=1e-6)


# Errors are measured against the float64 reference, relative to the largest
# reference value of each tensor.  Train-mode BN over few samples (batch 2,
# 2x2 maps in the last stage) amplifies float32 rounding: PyTorch's own float32
# CPU run is ~5e-5 off in ResNet-50's logits there, so train mode gets a wider bound.
EVAL_RTOL, TRAIN_RTOL = 1e-4, 1e-3

SIZES = {"resnet18": 64, "resnet50": 64, "mbv2": 64, "cifar20": 28}
NUM_CLASSES = {"resnet18": 1000, "resnet50": 1000, "mbv2": 1000, "cifar20": 10}


@pytest.fixture(scope="module")
def pairs():
    """dmcp model and its float64 PyTorch twin with identical weights, per arch."""
    out = {}

    def get(arch):
        if arch not in out:
            rng = np.random.default_rng(7)
            model = build_dmcp(arch)
            randomize(model, rng)
            ref = RefClassifier(arch, NUM_CLASSES[arch], IN_CHANNELS[arch])
            copy_to_ref(model, ref)
            out[arch] = (model, ref)
        return out[arch]

    return get


# ---------------------------------------------------------------------------
# full models vs PyTorch
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mbv2", "cifar20"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_forward_backward_match_pytorch(arch, train, pairs, close):
    model, ref = pairs(arch)
    # the reference was loaded from the model: every tensor must match before the step
    copy_to_ref(model, ref)
    rng = np.random.default_rng(11)
    s = SIZES[arch]
    x = rng.normal(0.0, 1.0, (2, IN_CHANNELS[arch], s, s)).astype(np.float32)
    dl = rng.normal(0.0, 1.0, (2, NUM_CLASSES[arch])).astype(np.float32)
    got, gdx, want, wdx = run_pair(model, ref, x, dl, train)
    fam = f"{arch} {'train' if train else 'eval'}"
    assert got.shape == (2, NUM_CLASSES[arch]) and got.dtype == np.float32
    rtol = TRAIN_RTOL if train else EVAL_RTOL
    close(got, want, f"{fam} logits", rtol=rtol, atol=1e-6)
    close(gdx, wdx, f"{fam} input grad", rtol=rtol, atol=1e-8)
    check_grads(close, fam, model, ref, rtol=rtol)
    if train:
        check_running_stats(close, fam, model, ref)


def test_backward_accumulates(pairs, close):
    """Two backwards without zero_grad give twice the gradient (PyTorch semantics)."""
    model, _ = pairs("cifar20")
    model.eval()
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 1, 12, 12)).astype(np.float32)
    dl = rng.normal(size=(2, 10)).astype(np.float32)
    model.zero_grad()
    model(x)
    model.backward(dl)
    once = {n: p.grad.copy() for n, p in model.named_parameters()}
    model(x)
    model.backward(dl)
    for n, p in model.named_parameters():
        close(p.grad, 2 * once[n], "backward accumulates", rtol=1e-6, atol=0)


@pytest.mark.parametrize("arch", ["resnet50", "mbv2", "cifar20"])
def test_backward_without_the_image_gradient_gives_the_same_weight_gradients(arch, pairs):
    """Training asks for no input gradient (need_dinp=False): the stem skips its
    backward-data, returns None, and every parameter gradient is bit-identical."""
    model, _ = pairs(arch)
    model.train()
    rng = np.random.default_rng(5)
    s = SIZES[arch]
    x = rng.normal(size=(2, IN_CHANNELS[arch], s, s)).astype(np.float32)
    dl = rng.normal(size=(2, NUM_CLASSES[arch])).astype(np.float32)
    grads = []
    for need in (True, False):
        model.zero_grad()
        model(x)
        dx = model.backward(dl, need_dinp=need)
        assert (dx is None) == (not need)
        grads.append({n: p.grad.copy() for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for n in grads[0]:
        np.testing.assert_array_equal(grads[1][n], grads[0][n], err_msg=n)
    model.zero_grad()


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mbv2", "cifar20"])
def test_no_grad_eval_folds_bn_and_matches_pytorch(arch, pairs, close):
    """Under nn.no_grad an eval-mode model runs each conv with its BN and
    activation folded into the conv's output pass: the logits match PyTorch
    and the unfolded eval forward (bit for bit: the fold computes BN's own
    coefficients), on the full net and on a subnet."""
    model, ref = pairs(arch)
    copy_to_ref(model, ref)
    model.eval()
    ref.eval()
    rng = np.random.default_rng(13)
    s = SIZES[arch]
    x = rng.normal(0.0, 1.0, (3, IN_CHANNELS[arch], s, s)).astype(np.float32)
    plain = model(x)
    calls = []
    orig = dmcp.nn.BatchNorm2d.forward
    with mock.patch.object(dmcp.nn.BatchNorm2d, "forward",
                           lambda self, *a, **k: calls.append(1) or orig(self, *a, **k)):
        with dmcp.nn.no_grad():
            folded = model(x)
    assert calls == [], "a BN ran as its own pass under no_grad in eval mode"
    np.testing.assert_array_equal(folded, plain)
    with torch.no_grad():
        want = ref(torch.from_numpy(x.astype(np.float64))).numpy()
    close(folded, want, f"{arch} no_grad eval logits", rtol=EVAL_RTOL, atol=1e-6)
    mut = dmcp.Mutator(model, (0.1, 1.0, 0.1), "sigmoid")
    try:
        mut.set_widths("random", rng=np.random.default_rng(21))
        half = model(x)
        with dmcp.nn.no_grad():
            np.testing.assert_array_equal(model(x), half)
    finally:
        mut.set_widths("max")


def test_no_grad_keeps_nothing_and_train_mode_bn_is_not_folded(pairs, close):
    """A backward after a no_grad forward raises (nothing was kept), the mode
    is restored on leaving the block, even by an exception, and train-mode BN
    and gated units are not folded (they still give the plain forward's result)."""
    model, _ = pairs("cifar20")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 1, 12, 12)).astype(np.float32)
    dl = rng.normal(size=(2, 10)).astype(np.float32)
    model.eval()
    with dmcp.nn.no_grad():
        assert not dmcp.nn.is_grad_enabled()
        model(x)
    assert dmcp.nn.is_grad_enabled()
    with pytest.raises(RuntimeError, match="no_grad"):
        model.backward(dl)
    with pytest.raises(ValueError):
        with dmcp.nn.no_grad():
            raise ValueError("inside")
    assert dmcp.nn.is_grad_enabled()
    # gates on (the architecture step's forward): BN runs with its gate, not folded
    mut = dmcp.Mutator(model, (0.1, 1.0, 0.1), "sigmoid")
    mut.set_gates(True)
    try:
        gated = model(x)
        with dmcp.nn.no_grad():
            np.testing.assert_array_equal(model(x), gated)
    finally:
        mut.set_gates(False)
    # train mode: BN uses batch statistics and updates its running ones once per forward
    saved = {n: v.copy() for n, v in model.state_dict().items()}
    model.train()
    try:
        want = model(x)
        model.load_state_dict(saved)
        with dmcp.nn.no_grad():
            got = model(x)
        np.testing.assert_array_equal(got, want)
    finally:
        model.load_state_dict(saved)
        model.eval()


# ---------------------------------------------------------------------------
# names, units, counts
# ---------------------------------------------------------------------------

R50_CFG = dict(type="ImageClassifier", backbone=dict(type="ResNet", depth=50),
               neck=dict(type="GlobalAveragePooling"),
               head=dict(type="LinearClsHead", num_classes=1000, in_channels=2048))


def resnet_unit_names(blocks, last):
    names = ["backbone.conv1"]
    for s, n in enumerate(blocks):
        for b in range(n):
            names += [f"backbone.layer{s + 1}.{b}.conv1"]
            if last == "conv3":
                names += [f"backbone.layer{s + 1}.{b}.conv2"]
    return names


def test_resnet50_units_have_the_interface_names():
    model = dmcp.build_model(R50_CFG)       # the exact config of the brief
    names = resnet_unit_names((3, 4, 6, 3), "conv3") + [f"backbone.layer{s}.0.conv3" for s in range(1, 5)]
    assert len(names) == 37
    assert sorted(model.units) == sorted(names)
    ch = {u.name: u.num_channels for u in model.units.values()}
    assert ch["backbone.conv1"] == 64
    assert [ch[f"backbone.layer{s}.0.conv3"] for s in range(1, 5)] == [256, 512, 1024, 2048]
    assert ch["backbone.layer3.4.conv1"] == ch["backbone.layer3.4.conv2"] == 256
    assert model.units["backbone.layer2.0.conv3"].key == "backbone.layer2.0.conv3_(0, 512)_512"


def test_resnet18_and_cifar_units_tie_the_first_stage_to_the_stem():
    """A stage without a downsample adds into the stem's stream: no unit of its own."""
    r18 = shared_dmcp("resnet18")
    names = resnet_unit_names((2, 2, 2, 2), "conv2") + [f"backbone.layer{s}.0.conv2" for s in (2, 3, 4)]
    assert sorted(r18.units) == sorted(names)
    c20 = shared_dmcp("cifar20")
    names = resnet_unit_names((3, 3, 3), "conv2") + [f"backbone.layer{s}.0.conv2" for s in (2, 3)]
    assert sorted(c20.units) == sorted(names)
    assert c20.backbone.conv1.weight.shape == (16, 1, 3, 3)


def mbv2_unit_names():
    names = ["backbone.conv1.conv", "backbone.layer1.0.conv.1.conv", "backbone.conv2.conv"]
    for s, (t, c, n, stride) in enumerate(RefMobileNetV2Backbone.SETTINGS[1:], start=2):
        names.append(f"backbone.layer{s}.0.conv.2.conv")
        names += [f"backbone.layer{s}.{b}.conv.0.conv" for b in range(n)]
    return names


def test_mobilenetv2_units_have_the_interface_names():
    model = shared_dmcp("mbv2")
    names = mbv2_unit_names()
    assert len(names) == 25
    assert sorted(model.units) == sorted(names)
    ch = {u.name: u.num_channels for u in model.units.values()}
    assert ch["backbone.conv1.conv"] == 32 and ch["backbone.conv2.conv"] == 1280
    assert ch["backbone.layer1.0.conv.1.conv"] == 16 and ch["backbone.layer7.0.conv.2.conv"] == 320
    assert ch["backbone.layer4.3.conv.0.conv"] == 384


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mbv2", "cifar20"])
def test_state_dict_keys_and_shapes_are_mmcls(arch):
    """Exactly the mmcls/PyTorch keys (no aliases), PyTorch shapes and dtypes."""
    model = shared_dmcp(arch)
    ref = shared_ref(arch)
    sd = model.state_dict()
    want = ref.state_dict()
    assert sorted(set(sd) - set(want)) == [], "keys PyTorch's model does not have"
    assert sorted(set(want) - set(sd)) == []
    assert list(sd) == list(want), "PyTorch key order"
    for k, v in want.items():
        assert tuple(np.shape(sd[k])) == tuple(v.shape), k
        assert np.asarray(sd[k]).dtype == (np.int64 if k.endswith("num_batches_tracked") else np.float32)
    names = [n for n, _ in model.named_parameters()]
    assert names == [n for n, _ in ref.named_parameters()]
    assert len({id(p) for p in model.parameters()}) == len(names)


def test_named_parameters_yield_each_parameter_once():
    """An optimiser steps every Parameter in model.parameters(): a duplicate
    would be updated twice per step."""
    model = build_dmcp("resnet18")
    ps = model.parameters()
    assert len(ps) == len({id(p) for p in ps}), f"{len(ps) - len({id(p) for p in ps})} duplicated parameters"


FLOPS_224 = {"resnet50": 4089184256, "mbv2": 300774272, "resnet18": 1814073344}
PARAMS = {"resnet50": 25557032, "mbv2": 3504872, "resnet18": 11689512}   # torchvision's counts


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mbv2"])
def test_count_flops_at_224(arch):
    model = shared_dmcp(arch)
    r = dmcp.count_flops(model, (3, 224, 224))
    assert r["flops"] == FLOPS_224[arch]
    assert isinstance(r["flops"], int)
    assert sum(row["flops"] for row in r["layers"]) == r["flops"]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "mbv2"])
def test_count_params_is_torchvisions(arch):
    """conv + BN + fc parameters, each counted once."""
    model = shared_dmcp(arch)
    ref = shared_ref(arch)
    assert sum(p.numel() for p in ref.parameters()) == PARAMS[arch]
    assert dmcp.count_flops(model, (3, 224, 224))["params"] == PARAMS[arch]


def ref_macs(ref, shape):
    """conv + linear MACs of the reference at one image of ``shape``, by hooks."""
    total = [0]

    def hook(m, inp, out):
        if isinstance(m, tnn.Conv2d):
            total[0] += out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            total[0] += m.in_features * m.out_features

    hs = [m.register_forward_hook(hook) for m in ref.modules() if isinstance(m, (tnn.Conv2d, tnn.Linear))]
    ref.eval()
    with torch.no_grad():
        ref(torch.zeros((1,) + tuple(shape), dtype=torch.float64))
    for h in hs:
        h.remove()
    return total[0]


@pytest.mark.parametrize("arch,shape", [("resnet18", (3, 61, 47)), ("mbv2", (3, 33, 40)),
                                        ("cifar20", (1, 28, 28))])
def test_count_flops_odd_sizes_match_hooks(arch, shape):
    model = shared_dmcp(arch)
    ref = shared_ref(arch)
    assert dmcp.count_flops(model, shape)["flops"] == ref_macs(ref, shape)


def test_count_flops_leaves_the_model_untouched():
    model = build_dmcp("cifar20")
    model.train()
    before = {k: np.array(v, copy=True) for k, v in model.state_dict().items()}
    dmcp.count_flops(model, (1, 28, 28))
    assert all(m.training for _, m in model.named_modules())
    for k, v in model.state_dict().items():
        assert np.array_equal(before[k], v), f"{k} changed by count_flops"


# ---------------------------------------------------------------------------
# channel-sliced subnets vs dense smaller PyTorch models
# ---------------------------------------------------------------------------

def subnet_pair(arch, widths_fn, seed=5):
    model = build_dmcp(arch)
    randomize(model, np.random.default_rng(seed))
    mut = dmcp.Mutator(model, (0.1, 1.0, 0.1), "sigmoid")
    widths_fn(mut)
    widths = mut.widths()
    ref = RefClassifier(arch, NUM_CLASSES[arch], IN_CHANNELS[arch], widths=widths)
    copy_to_ref(model, ref)
    return model, mut, ref, widths


def _random_widths(mut):
    mut.set_widths("random", rng=np.random.default_rng(2024))


def _choice_widths(mut):
    choices = {}
    for i, u in enumerate(mut.units):
        cands = u.candidates()
        choices[u.name] = cands[(3 * i + 1) % len(cands)]
    mut.set_widths("choice", choices=choices)


@pytest.mark.parametrize("arch,widths_fn", [("resnet18", _random_widths), ("resnet50", _choice_widths),
                                            ("mbv2", _choice_widths), ("mbv2", _random_widths),
                                            ("cifar20", _random_widths)],
                         ids=["resnet18-random", "resnet50-choice", "mbv2-choice", "mbv2-random",
                              "cifar20-random"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_subnet_equals_dense_smaller_model(arch, widths_fn, train, close):
    model, mut, ref, widths = subnet_pair(arch, widths_fn)
    full = {u.name: u.num_channels for u in mut.units}
    assert sum(widths[n] < full[n] for n in widths) >= len(widths) // 2, "widths were not set"
    rng = np.random.default_rng(8)
    s = SIZES[arch]
    x = rng.normal(size=(2, IN_CHANNELS[arch], s, s)).astype(np.float32)
    dl = rng.normal(size=(2, NUM_CLASSES[arch])).astype(np.float32)
    before = {k: np.array(v, copy=True) for k, v in model.state_dict().items()}
    got, gdx, want, wdx = run_pair(model, ref, x, dl, train)
    fam = f"subnet {arch} {'train' if train else 'eval'}"
    rtol = TRAIN_RTOL if train else EVAL_RTOL
    close(got, want, f"{fam} logits", rtol=rtol, atol=1e-6)
    close(gdx, wdx, f"{fam} input grad", rtol=rtol, atol=1e-8)
    check_grads(close, fam, model, ref, rtol=rtol)
    if train:
        check_running_stats(close, fam, model, ref)
        # statistics of the inactive channels are untouched
        ref_sd = ref.state_dict()
        for k, v in model.state_dict().items():
            if "running" in k and k in ref_sd:
                n = ref_sd[k].shape[0]
                assert np.array_equal(v[n:], before[k][n:]), k
    # and the FLOPs at those widths are the dense model's
    shape = (IN_CHANNELS[arch], s, s)
    assert dmcp.count_flops(model, shape)["flops"] == ref_macs(ref, shape)
    assert mut.current_flops(shape) == pytest.approx(ref_macs(ref, shape), rel=1e-12)


def test_min_subnet_and_back_to_max(close):
    """'min' then 'max' widths give the full model's logits again."""
    model = build_dmcp("cifar20")
    randomize(model, np.random.default_rng(1))
    model.eval()
    mut = dmcp.Mutator(model, (0.1, 1.0, 0.1), "exp")
    x = np.random.default_rng(2).normal(size=(2, 1, 16, 16)).astype(np.float32)
    full = model(x).copy()
    mut.set_widths("min")
    small = model(x)
    assert not np.allclose(small, full)
    ref = RefClassifier("cifar20", 10, 1, widths=mut.widths())
    copy_to_ref(model, ref)
    ref.eval()
    close(small, ref(torch.from_numpy(x.astype(np.float64))).detach().numpy(), "subnet min logits",
          rtol=1e-4, atol=1e-6)
    mut.set_widths("max")
    np.testing.assert_array_equal(model(x), full)


# ---------------------------------------------------------------------------
# frozen_stages / norm_eval: one SGD step against mmcls's semantics in PyTorch
# ---------------------------------------------------------------------------

def mmcls_train(ref, arch, frozen_stages, norm_eval):
    """mmcls ResNet/MobileNetV2 ``train()`` on the reference: _freeze_stages (the stem's
    and stages 1..k's parameters stop; the stages and ResNet's stem BN go to eval mode;
    MobileNetV2's stem BN keeps training), then norm_eval puts every BN in eval mode."""
    bb = ref.backbone
    ref.train()
    nstages = 7 if arch == "mbv2" else bb.nstages
    stem = [bb.conv1] if arch == "mbv2" else [bb.conv1, bb.bn1]
    if frozen_stages >= 0:
        if arch != "mbv2":
            bb.bn1.eval()
        for m in stem:
            for p in m.parameters():
                p.requires_grad = False
    for i in range(1, min(frozen_stages, nstages) + 1):
        layer = getattr(bb, f"layer{i}")
        layer.eval()
        for p in layer.parameters():
            p.requires_grad = False
    if norm_eval:
        for m in bb.modules():
            if isinstance(m, tnn.BatchNorm2d):
                m.eval()


@pytest.mark.parametrize("arch, frozen_stages, norm_eval", [
    ("cifar20", 1, False), ("cifar20", 0, False), ("cifar20", -1, True),
    ("cifar20", 3, True), ("mbv2", 1, False), ("mbv2", -1, True)])
def test_frozen_stages_and_norm_eval_follow_mmcls(arch, frozen_stages, norm_eval, close):
    cfg = classifier_cfg(arch)
    cfg["backbone"].update(frozen_stages=frozen_stages, norm_eval=norm_eval)
    model = dmcp.build_model(cfg, seed=0)
    randomize(model, np.random.default_rng(7))
    ref = RefClassifier(arch, NUM_CLASSES[arch], IN_CHANNELS[arch])
    copy_to_ref(model, ref)
    before = {k: np.array(v) for k, v in model.state_dict().items()}
    model.eval()
    model.train()           # the switch must keep the frozen parts in eval mode
    mmcls_train(ref, arch, frozen_stages, norm_eval)
    for name, m in ref.named_modules():
        if isinstance(m, tnn.BatchNorm2d):
            assert dict(model.named_modules())[name].training == m.training, name

    rng = np.random.default_rng(11)
    s = SIZES[arch]
    x = rng.normal(0.0, 1.0, (2, IN_CHANNELS[arch], s, s)).astype(np.float32)
    dl = rng.normal(0.0, 1.0, (2, NUM_CLASSES[arch])).astype(np.float32)
    model.zero_grad()
    got, want = ref_forward(model, x, ref)
    model.backward(dl)
    (want * torch.from_numpy(dl.astype(np.float64))).sum().backward()
    # weight decay and momentum would move a frozen parameter if the optimiser stepped it
    dmcp.nn.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01).step()
    torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01).step()

    fam = f"{arch} frozen_stages={frozen_stages} norm_eval={norm_eval}"
    close(got, want.detach().numpy(), f"{fam} logits", rtol=TRAIN_RTOL, atol=1e-6)
    after = model.state_dict()
    steps = {}          # layer -> (dmcp's, the reference's) update, a BN's weight and bias together
    for name, p in ref.named_parameters():
        if p.requires_grad:
            mine, theirs = steps.setdefault(name.rpartition(".")[0], ([], []))
            mine.append((after[name] - before[name]).ravel())
            theirs.append((p.detach().numpy() - before[name]).ravel())
        else:
            assert np.array_equal(after[name], before[name]), f"frozen {name} changed"
    for mine, theirs in steps.values():
        close(np.concatenate(mine), np.concatenate(theirs), f"{fam} updates", rtol=TRAIN_RTOL,
              atol=1e-7)
    for name, m in ref.named_modules():
        if isinstance(m, tnn.BatchNorm2d) and not m.training:
            for b in ("running_mean", "running_var", "num_batches_tracked"):
                assert np.array_equal(after[f"{name}.{b}"], before[f"{name}.{b}"]), f"{name}.{b}"
    check_running_stats(close, fam, model, ref)


def test_backbone_key_errors_name_the_type_and_the_accepted_keys():
    cfg = classifier_cfg("cifar20")
    cfg["backbone"]["deph"] = 20
    with pytest.raises(dmcp.UserError, match=r"^backbone \(ResNet_CIFAR\): unknown key 'deph' "
                                             r"\(did you mean 'depth'\?\); accepted keys: .*depth.*"
                                             r"frozen_stages") as info:
        dmcp.build_model(cfg)
    assert "rng" not in str(info.value) and "small_input" not in str(info.value)
    cfg = classifier_cfg("mbv2")
    cfg["backbone"]["frozen_stage"] = 1
    with pytest.raises(dmcp.UserError, match=r"MobileNetV2\): unknown key 'frozen_stage' \(did you "
                                             r"mean 'frozen_stages'\?\)"):
        dmcp.build_model(cfg)
    for bad in (5, "1", True):
        cfg = classifier_cfg("cifar20")
        cfg["backbone"]["frozen_stages"] = bad
        with pytest.raises(dmcp.UserError, match=r"frozen_stages=.*-1\.\.3"):
            dmcp.build_model(cfg)


def test_dmcp_steps_keep_frozen_stages_frozen():
    """The architecture step switches weight gradients off and on again: a frozen
    stage must stay frozen, and the weight step must leave it alone."""
    from dmcp.algorithm import dmcp_train_step
    from dmcp.dist import SingleProcess
    arch = classifier_cfg("cifar20")
    arch["backbone"].update(frozen_stages=1)
    model = dmcp.build_model(dict(type="DMCP", architecture=arch, arch_start_train=0,
                                  arch_train_freq=1, target_flops=1.0,
                                  mutator_cfg=dict(parse_cfg=dict(demo_input=(1, 1, 28, 28)))))
    model.input_shape = (1, 28, 28)
    frozen = {n for n, p in model.architecture.named_parameters() if not p.requires_grad}
    assert "backbone.conv1.weight" in frozen and "backbone.layer1.0.conv1.weight" in frozen
    assert not any(n.startswith("backbone.layer2") for n in frozen)
    before = {n: np.array(v) for n, v in model.state_dict().items()}
    params = [p for _, p in model.architecture.named_parameters()]
    opt = dmcp.nn.SGD(params, lr=0.1, momentum=0.9, weight_decay=0.01)
    arch_opt = dmcp.nn.Adam(model.mutator.arch_parameters(), lr=0.5)
    x = np.random.default_rng(0).normal(size=(4, 1, 28, 28)).astype(np.float32)
    model.train()
    for it in range(2):
        stats = dmcp_train_step(model, opt, arch_opt, x, np.array([0, 1, 2, 3]), it,
                                np.random.default_rng(it), SingleProcess())
        assert "arch_loss" in stats
        assert {n for n, p in model.architecture.named_parameters() if not p.requires_grad} == frozen
    after = model.state_dict()
    for n in frozen:
        assert np.array_equal(after[n], before[n]), n
    assert not np.array_equal(after["backbone.layer2.0.conv1.weight"],
                              before["backbone.layer2.0.conv1.weight"])
    bn = dict(model.architecture.named_modules())["backbone.layer1.0.bn1"]
    assert not bn.training and np.array_equal(bn.running_mean, before["backbone.layer1.0.bn1.running_mean"])
