"""Layers, losses and optimisers on NumPy arrays; every computation is a call
into ``dmcp._C``.

A layer's ``forward(x)`` keeps what its backward needs; ``backward(dout)``
accumulates parameter gradients into ``.grad`` and returns the input gradient.
Inside ``with no_grad():`` forwards keep nothing for backward and, for layers
in eval mode, run each conv and the BN (and activation) after it as one pass.
Channel slicing: a layer runs on the channels its input carries and on its
first ``out_active`` outputs, so any subnet of a supernet runs on the full
weights without copies.
"""
import numpy as np

from . import _C


class _Grad:
    enabled = True


class no_grad:
    """``with dmcp.nn.no_grad():`` as PyTorch's: inference.  The forwards inside
    keep nothing for backward (a backward after them raises), so activations
    are freed as soon as the next layer has read them, and a conv followed by
    an eval-mode BN runs with the BN folded into the conv's output pass."""

    def __enter__(self):
        self._prev, _Grad.enabled = _Grad.enabled, False
        return self

    def __exit__(self, *exc):
        _Grad.enabled = self._prev
        return False


def is_grad_enabled():
    return _Grad.enabled


def _kept(cache, layer):
    """What ``layer``'s forward kept for its backward, or a clear error when it kept
    nothing (a forward under no_grad, or none yet)."""
    if cache is None:
        raise RuntimeError(f"{layer}.backward: its forward kept nothing for backward (it ran "
                           f"under dmcp.nn.no_grad(), or has not run)")
    return cache


def _f32(x, name):
    """The C core takes float32 C-contiguous arrays; say so instead of copying silently."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise TypeError(f"{name} must be float32, got {x.dtype}")
    return np.ascontiguousarray(x)


def _grad(p):
    """Where a backward kernel accumulates p's gradient: None when p is absent or frozen."""
    return p.grad if p is not None and p.requires_grad else None


def _pair(v):
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


class Parameter:
    """A trainable array and its gradient (same shape, float32).  With
    ``requires_grad`` False, backward passes leave ``grad`` alone (and skip
    computing it) and optimisers leave the parameter alone, as PyTorch's skip a
    parameter without a gradient."""

    def __init__(self, data):
        self.data = np.ascontiguousarray(data, dtype=np.float32)
        self.grad = np.zeros_like(self.data)
        self.requires_grad = True

    @property
    def shape(self):
        return self.data.shape

    def zero_grad(self):
        self.grad.fill(0.0)


class Module:
    """Base of every layer: parameter/buffer discovery in attribute order and the
    train/eval switch, as PyTorch users expect."""

    training = True

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def children(self):
        """Sub-modules in attribute order; names starting with '_' are private
        views (for example a block's op list) and are not traversed."""
        for name, v in vars(self).items():
            if name.startswith("_"):
                continue
            if isinstance(v, Module):
                yield name, v
            elif isinstance(v, (list, tuple)):
                for i, m in enumerate(v):
                    if isinstance(m, Module):
                        yield f"{name}.{i}", m

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, m in self.children():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix=""):
        for mname, m in self.named_modules(prefix):
            for name, v in vars(m).items():
                if isinstance(v, Parameter):
                    yield (f"{mname}.{name}" if mname else name), v

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix=""):
        for mname, m in self.named_modules(prefix):
            for name in getattr(m, "_buffers", ()):
                yield (f"{mname}.{name}" if mname else name), getattr(m, name)

    def state_dict(self):
        """name -> array (parameters and buffers, PyTorch order); arrays are live views."""
        d = {}
        for mname, m in self.named_modules():
            pre = f"{mname}." if mname else ""
            for name, v in vars(m).items():
                if isinstance(v, Parameter):
                    d[pre + name] = v.data
            for name in getattr(m, "_buffers", ()):
                d[pre + name] = getattr(m, name)
        return d

    def train(self, mode=True):
        """Set the mode here and, through each child's own ``train``, below (as PyTorch:
        a module may keep some of its layers in eval mode)."""
        self.training = mode
        for _, m in self.children():
            m.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for p in self.parameters():
            p.zero_grad()


def _kaiming_uniform(rng, shape, fan_in):
    bound = 1.0 / np.sqrt(fan_in)   # PyTorch's default for conv/linear weights
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)


class Conv2d(Module):
    """inp (N, c, H, W) -> out (N, oc, OH, OW); weight (out_channels, in_channels/groups, kh, kw).

    ``out_active`` (None = all) selects the first output channels; the input's
    channel count selects the first input channels.  A depthwise conv
    (groups == in_channels == out_channels) follows its input's width."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=False, rng=None):
        kh, kw = _pair(kernel_size)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: in_channels {in_channels} and out_channels {out_channels} "
                             f"must be divisible by groups {groups}")
        rng = rng if rng is not None else np.random.default_rng(0)
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = (kh, kw)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.depthwise = groups > 1 and groups == in_channels == out_channels
        fan_in = in_channels // groups * kh * kw
        self.weight = Parameter(_kaiming_uniform(rng, (out_channels, in_channels // groups, kh, kw), fan_in))
        self.bias = Parameter(_kaiming_uniform(rng, (out_channels,), fan_in)) if bias else None
        self.out_active = None
        self._inp = None

    def _geometry(self, x):
        c = x.shape[1]
        groups = c if self.depthwise else self.groups
        oc = c if self.depthwise else (self.out_active or self.out_channels)
        return c, oc, groups

    def out_shape(self, x_shape):
        n, c, h, w = x_shape
        kh, kw = self.kernel_size
        (sh, sw), (ph, pw), (dh, dw) = self.stride, self.padding, self.dilation
        oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        oc = c if self.depthwise else (self.out_active or self.out_channels)
        return (n, oc, oh, ow)

    def forward(self, x, epilogue=None):
        """``epilogue`` (scale, shift, act), inference only: out = act(conv * scale + shift)
        per output channel, shift replacing the bias (an eval-mode BN folded in)."""
        x = _f32(x, "Conv2d input")
        if x.ndim != 4:
            raise ValueError(f"Conv2d expects an (N, C, H, W) input, got shape {x.shape}")
        c, oc, groups = self._geometry(x)
        out = np.empty(self.out_shape(x.shape), dtype=np.float32)
        scale, shift, act = epilogue or (None, None if self.bias is None else self.bias.data, None)
        _C.conv2d_forward(out, x, self.weight.data, shift, *self.stride, *self.padding,
                          *self.dilation, groups, scale=scale, act=act)
        self._inp = x if _Grad.enabled else None
        self._out_hw = out.shape[2:]
        return out

    def folded_bn(self, bn, c, act=None):
        """(scale, shift, act) of eval-mode ``bn`` (and this conv's bias) for this
        conv's outputs given ``c`` input channels: the epilogue of forward."""
        oc = c if self.depthwise else (self.out_active or self.out_channels)
        invstd = np.float32(1.0) / np.sqrt(bn.running_var[:oc] + np.float32(bn.eps))
        scale = invstd if bn.weight is None else bn.weight.data[:oc] * invstd
        shift = -(bn.running_mean[:oc] * scale)
        if bn.bias is not None:
            shift = bn.bias.data[:oc] - bn.running_mean[:oc] * scale
        if self.bias is not None:
            shift = shift + self.bias.data[:oc] * scale
        return scale, shift, act

    def backward(self, dout, need_dinp=True):
        x = _kept(self._inp, "Conv2d")
        c, oc, groups = self._geometry(x)
        dinp = np.empty_like(x) if need_dinp else None      # overwritten (zeroed in C)
        _C.conv2d_backward(dinp, _grad(self.weight), _grad(self.bias),
                           _f32(dout, "Conv2d dout"), x, self.weight.data,
                           *self.stride, *self.padding, *self.dilation, groups, False)
        return dinp


class BatchNorm2d(Module):
    """Batch normalisation over (N, H, W); runs on the input's first channels.

    ``forward(x, gate, act)`` can also apply what follows BN in a DMCP layer in
    the same memory pass: ``gate`` (P, dP, min_ch, group_size) scales channel
    block k by P[k] (a unit's Markov gate; backward adds into dP) and ``act``
    is None, 0.0 (ReLU) or a cap (6.0: ReLU6), applied after the gate."""

    _buffers = ("running_mean", "running_var", "num_batches_tracked")

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True):
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = Parameter(np.ones(num_features, np.float32)) if affine else None
        self.bias = Parameter(np.zeros(num_features, np.float32)) if affine else None
        self.running_mean = np.zeros(num_features, np.float32)
        self.running_var = np.ones(num_features, np.float32)
        self.num_batches_tracked = np.zeros((), np.int64)
        self.track_running_stats = True
        self._cache = None

    def _inputs(self, x, gate, act):
        """x, checked, and what every BN kernel call takes besides it: gamma, beta,
        the epilogue keywords, and the gate's gradient buffer dP."""
        name = type(self).__name__
        x = _f32(x, f"{name} input")
        if x.ndim != 4 or x.shape[1] > self.num_features:
            raise ValueError(f"{name}({self.num_features}) got input of shape {x.shape}")
        gamma = None if self.weight is None else self.weight.data
        beta = None if self.bias is None else self.bias.data
        P, dP, min_ch, group_size = gate if gate is not None else (None, None, 0, 1)
        return x, gamma, beta, dict(P=P, min_ch=min_ch, group_size=group_size, act=act), dP

    def forward(self, x, gate=None, act=None):
        x, gamma, beta, epilogue, dP = self._inputs(x, gate, act)
        c = x.shape[1]
        out = np.empty_like(x)
        if self.training:
            mean = np.empty(c, np.float32)
            invstd = np.empty(c, np.float32)
            momentum = self.momentum if self.track_running_stats else -1.0
            _C.batchnorm_forward_train(out, mean, invstd, self.running_mean, self.running_var,
                                       x, gamma, beta, momentum, self.eps, **epilogue)
            if self.track_running_stats:
                self.num_batches_tracked += 1
        else:
            _C.batchnorm_forward_eval(out, x, gamma, beta, self.running_mean, self.running_var,
                                      self.eps, **epilogue)
            mean = self.running_mean[:c].copy()
            # float32 arithmetic, as the kernel's, so backward sees the forward's exact values
            invstd = np.float32(1.0) / np.sqrt(self.running_var[:c] + np.float32(self.eps))
        # beta is read again in backward: the gate and activation depend on it
        self._cache = (x, mean, invstd, self.training, dict(epilogue, dP=dP)) \
            if _Grad.enabled else None
        return out

    def backward(self, dout):
        x, mean, invstd, train, epilogue = _kept(self._cache, type(self).__name__)
        dinp = np.empty_like(x)
        _C.batchnorm_backward(dinp, _grad(self.weight), _grad(self.bias),
                              _f32(dout, "BatchNorm2d dout"), x, mean, invstd,
                              None if self.weight is None else self.weight.data, train, False,
                              beta=None if self.bias is None else self.bias.data, **epilogue)
        return dinp


class SyncBatchNorm2d(BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are those of the whole
    data-parallel batch (mmcv's ``SyncBN``): forward sums each channel's count,
    sum and sum of squares over the ranks of the current process group, backward
    the two gradient sums (of dy and of dy * x_hat), so N ranks with batch B train
    as one process with batch N*B.  Every rank must run the same training-mode
    forwards and backwards (each one is a collective); eval mode and a
    single-process group run BatchNorm2d unchanged.  Sums are float64."""

    def _group(self):
        if not self.training:
            return None
        from . import dist
        group = dist.current()
        return group if group is not None and group.world_size > 1 else None

    def forward(self, x, gate=None, act=None):
        group = self._group()
        self._sync = None
        if group is None:
            return super().forward(x, gate, act)
        x, gamma, beta, epilogue, dP = self._inputs(x, gate, act)
        c = x.shape[1]
        stats = np.empty(2 * c + 1, np.float64)
        stats[:c] = np.add.reduce(x, axis=(0, 2, 3), dtype=np.float64)
        stats[c:2 * c] = np.add.reduce(np.square(x), axis=(0, 2, 3), dtype=np.float64)
        stats[2 * c] = x.shape[0] * x.shape[2] * x.shape[3]
        group.allreduce_sum(stats)
        count = stats[2 * c]
        mean64 = stats[:c] / count
        var64 = np.maximum(stats[c:2 * c] / count - mean64 * mean64, 0.0)
        mean, var = mean64.astype(np.float32), var64.astype(np.float32)
        out = np.empty_like(x)
        _C.batchnorm_forward_eval(out, x, gamma, beta, mean, var, self.eps, **epilogue)
        if self.track_running_stats:
            m = np.float32(self.momentum)
            unbiased = (var64 * (count / max(count - 1.0, 1.0))).astype(np.float32)
            self.running_mean[:c] = (1 - m) * self.running_mean[:c] + m * mean
            self.running_var[:c] = (1 - m) * self.running_var[:c] + m * unbiased
            self.num_batches_tracked += 1
        invstd = np.float32(1.0) / np.sqrt(var + np.float32(self.eps))
        self._cache = (x, mean, invstd, True, dict(epilogue, dP=dP)) if _Grad.enabled else None
        self._sync = (group, count)
        return out

    def backward(self, dout):
        if self._sync is None:
            return super().backward(dout)
        group, count = self._sync
        x, mean, invstd, _, epilogue = self._cache
        c = x.shape[1]
        gamma = None if self.weight is None else self.weight.data
        # through the gate and activation with the statistics held fixed: dinp is
        # gamma * invstd * dy, and the local sums of dy * x_hat and dy come out
        sums = np.zeros(2 * c, np.float32)
        dinp = np.empty_like(x)
        _C.batchnorm_backward(dinp, sums[:c], sums[c:], _f32(dout, "SyncBatchNorm2d dout"), x,
                              mean, invstd, gamma, False, False,
                              beta=None if self.bias is None else self.bias.data, **epilogue)
        if _grad(self.weight) is not None:
            self.weight.grad[:c] += sums[:c]
        if _grad(self.bias) is not None:
            self.bias.grad[:c] += sums[c:]
        total = sums.astype(np.float64)
        group.allreduce_sum(total)
        # the statistics' share: - gamma * invstd / M * (sum dy + x_hat * sum dy x_hat)
        scale = (invstd if gamma is None else gamma[:c] * invstd) / np.float32(count)
        k_dy = (scale * total[c:]).astype(np.float32)[:, None, None]
        k_x = (scale * invstd * total[:c]).astype(np.float32)[:, None, None]
        dinp -= k_dy + (x - mean[:, None, None]) * k_x
        return dinp

class ReLU(Module):
    """max(x, 0), or min(max(x, 0), 6) with ``cap=6`` (ReLU6)."""

    def __init__(self, cap=0.0):
        self.cap = float(cap)
        self._out = None

    def forward(self, x):
        out = np.empty_like(x)
        _C.relu_forward(out, _f32(x, "ReLU input"), self.cap)
        self._out = out
        return out

    def backward(self, dout):
        dinp = np.empty_like(self._out)
        _C.relu_backward(dinp, _f32(dout, "ReLU dout"), self._out, self.cap, False)
        return dinp


def ReLU6():
    return ReLU(6.0)


class MaxPool2d(Module):
    def __init__(self, kernel_size=3, stride=2, padding=1):
        self.kernel_size, self.stride, self.padding = int(kernel_size), int(stride), int(padding)
        self._cache = None

    def forward(self, x):
        x = _f32(x, "MaxPool2d input")
        n, c, h, w = x.shape
        k, s, p = self.kernel_size, self.stride, self.padding
        shape = (n, c, (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1)
        out = np.empty(shape, np.float32)
        argmax = np.empty(shape, np.int32)
        _C.maxpool2d_forward(out, argmax, x, k, s, p)
        self._cache = (x.shape, argmax)
        return out

    def backward(self, dout):
        shape, argmax = self._cache
        dinp = np.zeros(shape, np.float32)
        _C.maxpool2d_backward(dinp, _f32(dout, "MaxPool2d dout"), argmax)
        return dinp


class GlobalAvgPool(Module):
    """(N, C, H, W) -> (N, C)."""

    def __init__(self):
        self._shape = None

    def forward(self, x):
        x = _f32(x, "GlobalAvgPool input")
        if x.ndim != 4:
            raise ValueError(f"GlobalAvgPool expects (N, C, H, W), got {x.shape}")
        out = np.empty(x.shape[:2], np.float32)
        _C.avgpool_global_forward(out, x)
        self._shape = x.shape
        return out

    def backward(self, dout):
        dinp = np.zeros(self._shape, np.float32)
        _C.avgpool_global_backward(dinp, _f32(dout, "GlobalAvgPool dout"))
        return dinp


class Linear(Module):
    """inp (N, in) -> out (N, out_active or out_features); runs on the input's first features."""

    def __init__(self, in_features, out_features, bias=True, rng=None):
        rng = rng if rng is not None else np.random.default_rng(0)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(_kaiming_uniform(rng, (out_features, in_features), in_features))
        self.bias = Parameter(_kaiming_uniform(rng, (out_features,), in_features)) if bias else None
        self.out_active = None
        self._inp = None

    def forward(self, x):
        x = _f32(x, "Linear input")
        out = np.empty((x.shape[0], self.out_active or self.out_features), np.float32)
        _C.linear_forward(out, x, self.weight.data, None if self.bias is None else self.bias.data)
        self._inp = x if _Grad.enabled else None
        return out

    def backward(self, dout, need_dinp=True):
        x = _kept(self._inp, "Linear")
        dinp = np.zeros_like(x) if need_dinp else None
        _C.linear_backward(dinp, _grad(self.weight), _grad(self.bias),
                           _f32(dout, "Linear dout"), x, self.weight.data)
        return dinp


class Dropout(Module):
    """Inverted dropout; the mask comes from a counter-based generator keyed by
    ``seed`` and an internal call counter, so runs are reproducible."""

    def __init__(self, p=0.5, seed=0):
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be in [0, 1), got {p}")
        self.p, self.seed, self.calls = float(p), int(seed), 0
        self._mask = None

    def forward(self, x):
        x = _f32(x, "Dropout input")
        if not self.training or self.p == 0.0:
            self._mask = None
            return x
        out = np.empty_like(x)
        self._mask = np.empty_like(x)
        _C.dropout_forward(out, self._mask, x, self.p, (self.seed * 1000003 + self.calls) & (2**64 - 1))
        self.calls += 1
        return out

    def backward(self, dout):
        if self._mask is None:
            return dout
        dinp = np.zeros_like(self._mask)
        _C.dropout_backward(dinp, _f32(dout, "Dropout dout"), self._mask)
        return dinp


def _labels(labels, n):
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    return labels


class CrossEntropyLoss:
    """Mean softmax cross-entropy; ``label_smoothing`` eps gives targets
    (1-eps)*onehot + eps/K (PyTorch's and mmcls's 'original' mode)."""

    def __init__(self, label_smoothing=0.0, loss_weight=1.0):
        self.label_smoothing, self.loss_weight = float(label_smoothing), float(loss_weight)
        self._cache = None

    def __call__(self, logits, labels):
        return self.forward(logits, labels)

    def forward(self, logits, labels):
        logits = _f32(logits, "logits")
        n, k = logits.shape
        labels = _labels(labels, n)
        losses = np.empty(n, np.float32)
        probs = np.empty_like(logits)
        _C.crossentropy_forward(losses, probs, logits, labels, self.label_smoothing)
        self._cache = (probs, labels)
        return float(losses.mean(dtype=np.float64)) * self.loss_weight

    def backward(self, scale=1.0):
        probs, labels = self._cache
        dlogits = np.zeros_like(probs)
        _C.crossentropy_backward(dlogits, probs, labels, self.label_smoothing,
                                 scale * self.loss_weight / probs.shape[0])
        return dlogits


class KLDivergence:
    """tau^2 * KL(softmax(teacher/tau) || softmax(student/tau)), averaged over
    the batch (mmrazor's KLDivergence, reduction 'batchmean'); gradient for the student."""

    def __init__(self, tau=1.0, loss_weight=1.0):
        self.tau, self.loss_weight = float(tau), float(loss_weight)
        self._cache = None

    def __call__(self, student, teacher):
        return self.forward(student, teacher)

    def forward(self, student, teacher):
        student, teacher = _f32(student, "student logits"), _f32(teacher, "teacher logits")
        losses = np.empty(student.shape[0], np.float32)
        ps, pt = np.empty_like(student), np.empty_like(student)
        _C.kldiv_forward(losses, ps, pt, student, teacher, self.tau)
        self._cache = (ps, pt)
        return float(losses.mean(dtype=np.float64)) * self.loss_weight

    def backward(self, scale=1.0):
        ps, pt = self._cache
        d = np.zeros_like(ps)
        _C.kldiv_backward(d, ps, pt, self.tau, scale * self.loss_weight / ps.shape[0])
        return d


def _param_groups(params, defaults):
    """Accept a list of Parameters or of dicts {'params': [...], option: value}."""
    params = list(params)
    if params and isinstance(params[0], dict):
        groups = [dict(defaults, **g) for g in params]
    else:
        groups = [dict(defaults, params=params)]
    for g in groups:
        g["params"] = list(g["params"])
        for p in g["params"]:
            if not isinstance(p, Parameter):
                raise TypeError(f"optimiser params must be Parameters, got {type(p).__name__}")
    return groups


class SGD:
    """torch.optim.SGD semantics; per-group lr, momentum, weight_decay, nesterov."""

    def __init__(self, params, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: nesterov needs momentum > 0 and dampening 0")
        self.param_groups = _param_groups(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                                       weight_decay=weight_decay, nesterov=nesterov))
        self.state = {}     # id(param) -> momentum buffer

    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                if not p.requires_grad:
                    continue
                buf = self.state.get(id(p))
                first = buf is None
                if first and g["momentum"] != 0:
                    buf = self.state[id(p)] = np.zeros_like(p.data)
                _C.sgd_step(p.data, buf, p.grad, g["lr"], g["momentum"], g["dampening"],
                            g["weight_decay"], g["nesterov"], first)

    def zero_grad(self):
        for g in self.param_groups:
            for p in g["params"]:
                p.zero_grad()


class Adam:
    """torch.optim.Adam semantics (L2 weight decay added to the gradient)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        self.param_groups = _param_groups(params, dict(lr=lr, betas=tuple(betas), eps=eps,
                                                       weight_decay=weight_decay))
        self.state = {}     # id(param) -> [step, exp_avg, exp_avg_sq]

    def step(self):
        for g in self.param_groups:
            for p in g["params"]:
                if not p.requires_grad:
                    continue
                st = self.state.get(id(p))
                if st is None:
                    st = self.state[id(p)] = [0, np.zeros_like(p.data), np.zeros_like(p.data)]
                st[0] += 1
                _C.adam_step(p.data, st[1], st[2], p.grad, g["lr"], g["betas"][0], g["betas"][1],
                             g["eps"], g["weight_decay"], st[0])

    def zero_grad(self):
        for g in self.param_groups:
            for p in g["params"]:
                p.zero_grad()
