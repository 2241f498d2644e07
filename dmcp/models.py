"""Classification models with mmcls layer names and PyTorch shapes, built from
``dmcp.nn`` layers: ResNet (18/34/50/101), a small-input ResNet for 28x28 /
32x32 images (CIFAR-style ResNet-20/56), MobileNetV2, and ImageClassifier.

Every conv that writes into a channel unit is registered with it, so setting a
unit's width slices every layer that reads or writes those channels; a BN
whose output belongs to a unit is followed by that unit's Markov gate, which is
the identity unless the architecture step switches the gates on.
"""
import functools

import numpy as np

from . import _C
from .nn import (BatchNorm2d, Conv2d, CrossEntropyLoss, GlobalAvgPool, Linear, MaxPool2d, Module,
                 SyncBatchNorm2d, _f32, is_grad_enabled)
from .config import _did_you_mean, build, check_keys, strip_scope
from .units import ChannelUnit, UserError, make_divisible


class NormGateAct(Module):
    """A layer's BN, its unit's Markov gate (when the architecture step switches
    it on) and its activation (None, 0.0 ReLU, 6.0 ReLU6), run as one C pass
    each way.  Holds no parameters of its own: they stay in ``bn`` (its mmcls
    name) and in the unit."""

    def __init__(self, bn, unit, act=None):
        self._bn, self._unit, self._act = bn, unit, act

    def forward(self, x):
        u = self._unit
        gate = (u.P, u.dP, u.min_ch, u.group_size) if u.gate_on else None
        return self._bn.forward(x, gate=gate, act=self._act)

    def backward(self, dout):
        return self._bn.backward(dout)

    def folds_into(self, conv):
        """Whether inference may fold this into ``conv``'s output pass: BN in eval
        mode, the gate off, and no backward to follow (under nn.no_grad)."""
        return (not is_grad_enabled() and not self._bn.training and not self._unit.gate_on
                and isinstance(conv, Conv2d))


def _forward(ops, x):
    i = 0
    while i < len(ops):
        op, nxt = ops[i], ops[i + 1] if i + 1 < len(ops) else None
        if isinstance(nxt, NormGateAct) and nxt.folds_into(op):
            x = op.forward(x, op.folded_bn(nxt._bn, x.shape[1], nxt._act))
            nxt._bn._cache = None
            i += 2
        else:
            x = op.forward(x)
            i += 1
    return x


def _backward(ops, d, need_dinp=True):
    """Backward through ``ops`` in reverse; need_dinp=False tells the first op
    that nobody wants its input gradient (an image), which it then skips and
    returns None."""
    for i in range(len(ops) - 1, -1, -1):
        d = ops[i].backward(d) if i or need_dinp else ops[i].backward(d, need_dinp=False)
    return d


def _kaiming_fan_out(rng, conv):
    """mmcv's kaiming_init(mode='fan_out', nonlinearity='relu', distribution='normal')."""
    oc, cg, kh, kw = conv.weight.shape
    std = np.sqrt(2.0 / (oc * kh * kw))
    conv.weight.data[...] = rng.normal(0.0, std, conv.weight.shape).astype(np.float32)


NORM_LAYERS = {"BN": BatchNorm2d, "BN2d": BatchNorm2d, "SyncBN": SyncBatchNorm2d}


def norm_layer(norm_cfg):
    """mmcv's ``norm_cfg`` (type BN/BN2d/SyncBN, requires_grad, eps, momentum,
    affine) as a function of the channel count that makes the layer."""
    cfg = dict(norm_cfg if norm_cfg is not None else dict(type="BN"))
    t = strip_scope(cfg.pop("type", None))
    cls = NORM_LAYERS.get(t)
    if cls is None:
        raise UserError(f"norm_cfg type {t!r} is not one of {', '.join(NORM_LAYERS)}"
                        f"{_did_you_mean(t, NORM_LAYERS)}")
    check_keys(f"norm_cfg ({t})", cfg, ("requires_grad", "eps", "momentum", "affine"))
    requires_grad = cfg.pop("requires_grad", True)
    if not isinstance(requires_grad, bool):
        raise UserError(f"norm_cfg requires_grad={requires_grad!r}: must be True or False")
    for key in ("eps", "momentum"):
        v = cfg.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                              or not 0 < v <= (1 if key == "momentum" else 1e3)):
            raise UserError(f"norm_cfg {key}={v!r}: must be a number in "
                            f"{'(0, 1]' if key == 'momentum' else '(0, 1000]'}")

    def make(num_features):
        bn = cls(num_features, **cfg)
        for p in bn.parameters():
            p.requires_grad = requires_grad
        return bn
    return make


class UnitBook:
    """Creates channel units and ties convs to them while a backbone is built.
    ``widths`` (unit name -> width) builds a pruned network: that unit's layers
    are created at the given width instead of the full one; ``norm`` makes the
    backbone's norm layers (``norm_layer(norm_cfg)``)."""

    def __init__(self, rng, widths=None, norm=None):
        self.units = {}
        self.rng = rng
        self.widths = dict(widths or {})
        self.norm = norm or BatchNorm2d

    def unit(self, name, channels):
        channels = self.widths.pop(name, channels)
        u = self.units[name] = ChannelUnit(name, channels)
        return u

    def conv(self, in_unit, out_unit, kernel, stride=1, padding=0, groups=1, in_channels=None,
             out_channels=None, depthwise=False):
        """A conv reading ``in_unit`` (or a fixed in_channels) and writing ``out_unit``."""
        cin = in_unit.num_channels if in_unit is not None else in_channels
        cout = out_unit.num_channels if out_unit is not None else out_channels
        if depthwise:
            groups = cin
        conv = Conv2d(cin, cout, kernel, stride=stride, padding=padding, groups=groups, rng=self.rng)
        _kaiming_fan_out(self.rng, conv)
        conv.in_unit, conv.out_unit = in_unit, out_unit
        if out_unit is not None and not conv.depthwise:
            out_unit.out_convs.append(conv)
        return conv


class ConvModule(Module):
    """mmcv's ConvModule naming (``conv``, ``bn``): conv -> BN -> gate -> activation."""

    def __init__(self, book, in_unit, out_unit, kernel, stride=1, padding=0, act_cap=None,
                 depthwise=False, in_channels=None):
        self.conv = book.conv(in_unit, out_unit, kernel, stride, padding, in_channels=in_channels,
                              depthwise=depthwise)
        self.bn = book.norm(out_unit.num_channels)
        self._ops = [self.conv, NormGateAct(self.bn, out_unit, act_cap)]

    def forward(self, x):
        return _forward(self._ops, x)

    def backward(self, d, need_dinp=True):
        return _backward(self._ops, d, need_dinp)


class _ResidualBlock(Module):
    """Shared forward/backward of BasicBlock and Bottleneck: main ops, optional
    downsample ops, add, ReLU."""

    def forward(self, x):
        out = _forward(self._main, x)
        identity = _forward(self._down, x) if self._down else x
        # add and ReLU in one pass, over the main branch's output (a fresh array)
        _C.add_forward(out, out, identity, 0.0)
        self._out = out
        return out

    def backward(self, d):
        g = np.empty_like(self._out)
        _C.relu_backward(g, _f32(d, f"{type(self).__name__} dout"), self._out, 0.0, False)
        dx = _backward(self._main, g)
        _C.add_backward(dx, _backward(self._down, g) if self._down else g)
        return dx

    def _make_down(self, book, in_unit, res_unit, stride):
        self.downsample = [book.conv(in_unit, res_unit, 1, stride),
                           book.norm(res_unit.num_channels)]
        self._down = [self.downsample[0], NormGateAct(self.downsample[1], res_unit)]


class BasicBlock(_ResidualBlock):
    expansion = 1

    def __init__(self, book, prefix, in_unit, res_unit, planes, stride, downsample):
        u1 = book.unit(f"{prefix}.conv1", planes)
        self.conv1 = book.conv(in_unit, u1, 3, stride, 1)
        self.bn1 = book.norm(u1.num_channels)
        self.conv2 = book.conv(u1, res_unit, 3, 1, 1)
        self.bn2 = book.norm(res_unit.num_channels)
        self.downsample = None
        self._main = [self.conv1, NormGateAct(self.bn1, u1, 0.0), self.conv2,
                      NormGateAct(self.bn2, res_unit)]
        self._down = None
        if downsample:
            self._make_down(book, in_unit, res_unit, stride)
        self._last_bn = self.bn2


class Bottleneck(_ResidualBlock):
    expansion = 4

    def __init__(self, book, prefix, in_unit, res_unit, planes, stride, downsample):
        u1 = book.unit(f"{prefix}.conv1", planes)
        u2 = book.unit(f"{prefix}.conv2", planes)
        self.conv1 = book.conv(in_unit, u1, 1)
        self.bn1 = book.norm(u1.num_channels)
        self.conv2 = book.conv(u1, u2, 3, stride, 1)          # style='pytorch': stride on the 3x3
        self.bn2 = book.norm(u2.num_channels)
        self.conv3 = book.conv(u2, res_unit, 1)
        self.bn3 = book.norm(res_unit.num_channels)
        self.downsample = None
        self._main = [self.conv1, NormGateAct(self.bn1, u1, 0.0), self.conv2,
                      NormGateAct(self.bn2, u2, 0.0), self.conv3, NormGateAct(self.bn3, res_unit)]
        self._down = None
        if downsample:
            self._make_down(book, in_unit, res_unit, stride)
        self._last_bn = self.bn3


class _Backbone(Module):
    """Sequence of stem ops and stages with a units table, and mmcls's
    ``frozen_stages`` / ``norm_eval``: frozen_stages=k >= 0 freezes the stem and
    stages 1..k (their parameters get no gradient and no update, their layers stay
    in eval mode); norm_eval=True keeps every BN in eval mode while training."""

    def forward(self, x):
        return _forward(self._ops, x)

    def backward(self, d, need_dinp=True):
        return _backward(self._ops, d, need_dinp)

    def _freeze(self, frozen_stages, norm_eval, stem, stages, stem_eval=True):
        """``stem``: the stem's modules; ``stages``: one list of blocks per stage;
        ``stem_eval``: whether a frozen stem also stays in eval mode."""
        if not (isinstance(frozen_stages, int) and not isinstance(frozen_stages, bool)
                and -1 <= frozen_stages <= len(stages)):
            raise UserError(f"backbone frozen_stages={frozen_stages!r}: must be an integer in "
                            f"-1..{len(stages)} (-1 freezes nothing, 0 the stem, k the stem and "
                            f"stages 1..k)")
        if not isinstance(norm_eval, bool):
            raise UserError(f"backbone norm_eval={norm_eval!r}: must be True or False")
        self.frozen_stages, self.norm_eval = frozen_stages, norm_eval
        blocks = [blk for layer in stages[:max(frozen_stages, 0)] for blk in layer]
        stem = list(stem) if frozen_stages >= 0 else []
        for m in stem + blocks:
            for p in m.parameters():
                p.requires_grad = False
        self._always_eval = (stem if stem_eval else []) + blocks

    def train(self, mode=True):
        super().train(mode)
        if mode:
            for m in self._always_eval:
                m.eval()
            if self.norm_eval:
                for _, m in self.named_modules():
                    if isinstance(m, BatchNorm2d):
                        m.training = False
        return self


class ResNet(_Backbone):
    """mmcls ResNet, style='pytorch', or the small-input variant (``small_input=True``:
    3x3 stride-1 stem, no max-pool, three stages of 16/32/64 channels x width)."""

    arch = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)),
            50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3)),
            152: (Bottleneck, (3, 8, 36, 3))}

    def __init__(self, depth=50, in_channels=3, num_stages=4, out_indices=None, style="pytorch",
                 zero_init_residual=True, frozen_stages=-1, norm_eval=False, stem_channels=None,
                 base_channels=None, small_input=False, norm_cfg=None, rng=None, widths=None):
        if style != "pytorch":
            raise UserError(f"ResNet: only style='pytorch' is supported, got {style!r}")
        rng = rng if rng is not None else np.random.default_rng(0)
        book = UnitBook(rng, widths, norm_layer(norm_cfg))
        if small_input:
            if (depth - 2) % 6:
                raise UserError(f"small-input ResNet depth must be 6n+2 (20, 32, 44, 56, 110), got {depth}")
            block, blocks, num_stages = BasicBlock, ((depth - 2) // 6,) * 3, 3
            base = base_channels or 16
            stem = stem_channels or base
        else:
            if depth not in self.arch:
                raise UserError(f"ResNet depth must be one of {sorted(self.arch)}, got {depth}")
            if not 1 <= num_stages <= 4:
                raise UserError(f"ResNet num_stages must be 1..4, got {num_stages}")
            block, blocks = self.arch[depth]
            blocks = blocks[:num_stages]
            base = base_channels or 64
            stem = stem_channels or 64
        if out_indices is not None and tuple(out_indices) != (num_stages - 1,):
            raise UserError(f"ResNet: only the last stage output is supported "
                            f"(out_indices=({num_stages - 1},)), got {tuple(out_indices)}")
        self.depth, self.small_input = depth, small_input
        stem_unit = book.unit("backbone.conv1", stem)
        if small_input:
            self.conv1 = book.conv(None, stem_unit, 3, 1, 1, in_channels=in_channels)
        else:
            self.conv1 = book.conv(None, stem_unit, 7, 2, 3, in_channels=in_channels)
        self.bn1 = book.norm(stem_unit.num_channels)
        self._ops = [self.conv1, NormGateAct(self.bn1, stem_unit, 0.0)]
        if not small_input:
            self._ops.append(MaxPool2d(3, 2, 1))
        in_unit, inplanes = stem_unit, stem
        for s, nblocks in enumerate(blocks):
            planes = base * 2 ** s
            stride = 1 if s == 0 else 2
            out_planes = planes * block.expansion
            needs_down = stride != 1 or inplanes != out_planes
            res_unit = book.unit(f"backbone.layer{s + 1}.0.conv{3 if block is Bottleneck else 2}",
                                 out_planes) if needs_down else in_unit
            layer = []
            for b in range(nblocks):
                layer.append(block(book, f"backbone.layer{s + 1}.{b}", in_unit, res_unit, planes,
                                   stride if b == 0 else 1, needs_down and b == 0))
                in_unit = res_unit
            setattr(self, f"layer{s + 1}", layer)
            self._ops.extend(layer)
            inplanes = out_planes
        if book.widths:
            raise UserError(f"pruned widths name unknown unit(s): {', '.join(sorted(book.widths))}")
        self.units = book.units
        self.out_unit = in_unit
        stages = [getattr(self, f"layer{s + 1}") for s in range(len(blocks))]
        if zero_init_residual:
            for layer in stages:
                for blk in layer:
                    blk._last_bn.weight.data[...] = 0.0
        self._freeze(frozen_stages, norm_eval, [self.conv1, self.bn1], stages)
        self.train()


class InvertedResidual(Module):
    def __init__(self, book, prefix, in_unit, out_unit, stride, expand_ratio, new_out_unit):
        cin = in_unit.num_channels
        self.use_res = stride == 1 and not new_out_unit
        layers = []
        if expand_ratio != 1:
            hidden = book.unit(f"{prefix}.conv.0.conv", int(round(cin * expand_ratio)))
            layers.append(ConvModule(book, in_unit, hidden, 1, act_cap=6.0))
        else:
            hidden = in_unit
        layers.append(ConvModule(book, hidden, hidden, 3, stride, 1, act_cap=6.0, depthwise=True))
        layers.append(ConvModule(book, hidden, out_unit, 1))
        self.conv = layers

    def forward(self, x):
        out = _forward(self.conv, x)
        if self.use_res:
            _C.add_forward(out, out, x)     # over the last ConvModule's fresh output
        return out

    def backward(self, d):
        dx = _backward(self.conv, d)
        if self.use_res:
            _C.add_backward(dx, _f32(d, "InvertedResidual dout"))
        return dx


class MobileNetV2(_Backbone):
    """mmcls MobileNetV2 (out_indices=(7,): the 1x1 conv2 output)."""

    settings = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, widen_factor=1.0, in_channels=3, out_indices=(7,), frozen_stages=-1,
                 norm_eval=False, norm_cfg=None, rng=None, widths=None):
        if tuple(out_indices) != (7,):
            raise UserError(f"MobileNetV2: only out_indices=(7,) is supported, got {tuple(out_indices)}")
        rng = rng if rng is not None else np.random.default_rng(0)
        book = UnitBook(rng, widths, norm_layer(norm_cfg))
        self.widen_factor = widen_factor
        stem = book.unit("backbone.conv1.conv", make_divisible(32 * widen_factor, 8))
        self.conv1 = ConvModule(book, None, stem, 3, 2, 1, act_cap=6.0, in_channels=in_channels)
        self._ops = [self.conv1]
        in_unit = stem
        for s, (t, c, n, stride) in enumerate(self.settings):
            out_ch = make_divisible(c * widen_factor, 8)
            prefix = f"backbone.layer{s + 1}"
            out_unit = book.unit(f"{prefix}.0.conv.{1 if t == 1 else 2}.conv", out_ch)
            layer = []
            for b in range(n):
                blk = InvertedResidual(book, f"{prefix}.{b}", in_unit, out_unit,
                                       stride if b == 0 else 1, t, new_out_unit=(b == 0))
                layer.append(blk)
                in_unit = out_unit
            setattr(self, f"layer{s + 1}", layer)
            self._ops.extend(layer)
        last = int(1280 * widen_factor) if widen_factor > 1.0 else 1280
        last_unit = book.unit("backbone.conv2.conv", last)
        self.conv2 = ConvModule(book, in_unit, last_unit, 1, act_cap=6.0)
        self._ops.append(self.conv2)
        if book.widths:
            raise UserError(f"pruned widths name unknown unit(s): {', '.join(sorted(book.widths))}")
        self.units = book.units
        self.out_unit = last_unit
        # as mmcls: a frozen stem's parameters stop, but its BN keeps training mode
        self._freeze(frozen_stages, norm_eval, [self.conv1],
                     [getattr(self, f"layer{s + 1}") for s in range(len(self.settings))],
                     stem_eval=False)
        self.train()


# mmcls's CIFAR ResNet names build the small-input ResNet, ResNet-20 unless a depth is given
BACKBONES = {"ResNet": ResNet, "MobileNetV2": MobileNetV2,
             "ResNet_CIFAR": functools.partial(ResNet, depth=20, small_input=True),
             "CifarResNet": functools.partial(ResNet, depth=20, small_input=True)}


def global_average_pooling(dim=2):
    """mmcls's GlobalAveragePooling neck over (H, W)."""
    if dim != 2:
        raise UserError(f"neck (GlobalAveragePooling): dim={dim!r} is not supported (only 2)")
    return GlobalAvgPool()


NECKS = {"GlobalAveragePooling": global_average_pooling}


class LinearClsHead(Module):
    def __init__(self, num_classes, in_unit, loss=None, topk=(1,), in_channels=None, rng=None,
                 cal_acc=False, init_cfg=None, pruned=False):
        rng = rng if rng is not None else np.random.default_rng(0)
        # a pruned network keeps the supernet's head config; its input is the pruned width
        if in_channels is not None and in_channels != in_unit.num_channels and not pruned:
            raise UserError(f"LinearClsHead: in_channels={in_channels} but the backbone gives "
                            f"{in_unit.num_channels} channels")
        self.num_classes = num_classes
        self.fc = Linear(in_unit.num_channels, num_classes, rng=rng)
        self.fc.weight.data[...] = rng.normal(0.0, 0.01, self.fc.weight.shape).astype(np.float32)
        self.fc.bias.data[...] = 0.0
        self.fc.in_unit, self.fc.out_unit = in_unit, None
        self.topk = tuple(topk) if isinstance(topk, (list, tuple)) else (topk,)
        self.loss_module = build(LOSSES, loss or {}, "head.loss", what="loss",
                                 default="CrossEntropyLoss", head_classes=num_classes)

    def forward(self, x):
        return self.fc.forward(x)

    def backward(self, d):
        return self.fc.backward(d)


def cross_entropy_loss(head_classes, loss_weight=1.0, use_sigmoid=False, use_soft=False,
                       where="CrossEntropyLoss"):
    if use_sigmoid or use_soft:
        raise UserError(f"{where}: use_sigmoid/use_soft are not supported")
    return CrossEntropyLoss(0.0, loss_weight)


def label_smooth_loss(head_classes, label_smooth_val=0.1, mode="original", num_classes=None,
                      loss_weight=1.0, reduction="mean", use_sigmoid=False,
                      where="LabelSmoothLoss"):
    if mode != "original":
        raise UserError(f"{where}: only mode='original' is supported, got {mode!r}")
    if use_sigmoid or reduction != "mean":
        raise UserError(f"{where}: only use_sigmoid=False with reduction='mean' is supported")
    if num_classes is not None and num_classes != head_classes:
        raise UserError(f"{where}: num_classes={num_classes} but the head has {head_classes}")
    return CrossEntropyLoss(float(label_smooth_val), loss_weight)


# each takes the head's class count as ``head_classes``
LOSSES = {"CrossEntropyLoss": cross_entropy_loss, "LabelSmoothLoss": label_smooth_loss}
HEADS = {"LinearClsHead": LinearClsHead}


class ImageClassifier(Module):
    """backbone -> GlobalAveragePooling -> LinearClsHead, mmcls names."""

    def __init__(self, backbone, neck=None, head=None, data_preprocessor=None, init_cfg=None,
                 train_cfg=None, seed=0, widths=None, _scope_=None, pretrained=None):
        rng = np.random.default_rng(seed)
        self.backbone = build(BACKBONES, backbone, "backbone", what="backbone",
                              internal=("small_input",), rng=rng, widths=widths)
        self.neck = build(NECKS, neck or {}, "neck", what="neck", default="GlobalAveragePooling")
        self.head = build(HEADS, head or {}, "head", what="head", default="LinearClsHead",
                          in_unit=self.backbone.out_unit, rng=rng, pruned=bool(widths))
        self.units = self.backbone.units
        self._ops = [self.backbone, self.neck, self.head]

    @property
    def loss_module(self):
        return self.head.loss_module

    def forward(self, x):
        return _forward(self._ops, x)

    def backward(self, grad_logits, need_dinp=True):
        """The gradient of the input images (need_dinp=False, as in training:
        None, and the stem skips computing it)."""
        return _backward(self._ops, grad_logits, need_dinp)

    def load_state_dict(self, state, strict=True, slice_channels=False):
        from .checkpoint import load_weights
        return load_weights(self, state, strict, slice_channels)
