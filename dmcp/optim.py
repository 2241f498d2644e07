"""Optimisers and learning-rate schedules from mmengine-style config dicts."""
import math

import numpy as np

from .config import _did_you_mean, build, check_keys
from .nn import SGD, Adam, BatchNorm2d, Linear, Conv2d
from .units import UserError


def param_groups(model, base_wd, paramwise_cfg=None):
    """One group per parameter with its decay multiplier (mmengine's paramwise_cfg:
    norm_decay_mult for BN weight/bias, bias_decay_mult for conv/linear biases)."""
    cfg = dict(paramwise_cfg or {})
    check_keys("paramwise_cfg", cfg, ("norm_decay_mult", "bias_decay_mult", "custom_keys",
                                       "bypass_duplicate", "dwconv_decay_mult"))
    if cfg.get("custom_keys"):
        raise UserError("paramwise_cfg.custom_keys is not supported")
    norm_mult = float(cfg.get("norm_decay_mult", 1.0))
    bias_mult = float(cfg.get("bias_decay_mult", 1.0))
    dw_mult = cfg.get("dwconv_decay_mult")
    groups = []
    for mname, m in model.named_modules():
        for pname, p in (("weight", getattr(m, "weight", None)), ("bias", getattr(m, "bias", None))):
            if p is None or not hasattr(p, "grad"):
                continue
            mult = 1.0
            if isinstance(m, BatchNorm2d):
                mult = norm_mult
            elif pname == "bias" and isinstance(m, (Conv2d, Linear)):
                mult = bias_mult
            elif isinstance(m, Conv2d) and m.depthwise and dw_mult is not None:
                mult = float(dw_mult)
            groups.append(dict(params=[p], weight_decay=base_wd * mult,
                               name=f"{mname}.{pname}" if mname else pname))
    return groups


def adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
         where="Adam"):
    """torch.optim.Adam's config keys (amsgrad only off)."""
    if amsgrad:
        raise UserError(f"{where}: amsgrad is not supported")
    return Adam(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


OPTIMIZERS = {"SGD": SGD, "Adam": adam}


def build_optimizer(cfg, params_or_groups, where="optimizer"):
    """An optimizer over ``params_or_groups`` from dict(type='SGD' | 'Adam', ...)."""
    return build(OPTIMIZERS, cfg, where, params_or_groups, what="optimizer")


def optimizer_state(opt, names):
    """Optimiser state as name -> array(s), for checkpoints."""
    out = {}
    for g in opt.param_groups:
        for p in g["params"]:
            st = opt.state.get(id(p))
            if st is None:
                continue
            name = names[id(p)]
            if isinstance(opt, SGD):
                out[f"{name}.momentum_buffer"] = st
            else:
                out[f"{name}.step"] = np.array(st[0], np.int64)
                out[f"{name}.exp_avg"] = st[1]
                out[f"{name}.exp_avg_sq"] = st[2]
    return out


_STATE_FIELDS = {SGD: ("momentum_buffer",), Adam: ("step", "exp_avg", "exp_avg_sq")}


def keeps_state(opt):
    """Does a step leave state to checkpoint (Adam always, SGD with momentum)?"""
    return not isinstance(opt, SGD) or any(g["momentum"] != 0 for g in opt.param_groups)


def load_optimizer_state(opt, names, state, where="optimizer"):
    """Put ``optimizer_state``'s arrays back.  Every entry must name one of ``opt``'s
    parameters, a field its type keeps and the parameter's shape; once any state is
    given, every trainable parameter needs its own.  A mismatch is a UserError naming
    ``where`` and the entry; nothing is changed then."""
    kind = type(opt)
    fields = _STATE_FIELDS[kind]
    params = {names[id(p)]: p for g in opt.param_groups for p in g["params"]}
    found = {}
    for key, value in state.items():
        name, _, field = key.rpartition(".")
        if field not in fields:
            other = [k.__name__ for k, f in _STATE_FIELDS.items() if field in f]
            raise UserError(f"{where}: entry {key!r} is {other[0] if other else 'unknown'} state, "
                            f"but the config's optimizer is {kind.__name__}")
        if name not in params:
            raise UserError(f"{where}: entry {key!r} names no parameter of this model"
                            f"{_did_you_mean(name, params)}")
        found.setdefault(name, {})[field] = np.asarray(value)
    missing = [n for n, p in params.items() if p.requires_grad and n not in found] if found else []
    partial = [f"{n}.{f}" for n, got in found.items() for f in fields if f not in got]
    if missing or partial:
        gone = partial or missing
        raise UserError(f"{where}: no state for {len(gone)} entr{'y' if len(gone) == 1 else 'ies'} "
                        f"({', '.join(gone[:3])}{' ...' if len(gone) > 3 else ''}); was it saved "
                        f"for another model?")
    for name, got in found.items():
        shape = params[name].shape
        for field, value in got.items():
            want = () if field == "step" else shape
            if value.shape != want or (field == "step" and not (
                    np.issubdtype(value.dtype, np.integer) and value >= 0)):
                raise UserError(f"{where}: entry '{name}.{field}' has shape {value.shape} "
                                f"({value.dtype}); the model needs "
                                f"{'a non-negative integer' if field == 'step' else want}")
    for name, got in found.items():
        p = params[name]
        if kind is SGD:
            opt.state[id(p)] = np.array(got["momentum_buffer"], np.float32)
        else:
            opt.state[id(p)] = [int(got["step"]), np.array(got["exp_avg"], np.float32),
                                np.array(got["exp_avg_sq"], np.float32)]


class _Span:
    """Where a schedule runs: iterations [begin, end), ``scale`` iterations per unit of
    its config (an epoch, or 1), and the optimizer's base learning rate."""

    def __init__(self, begin, end, scale, base_lr):
        self.begin, self.end, self.scale, self.base_lr = begin, end, scale, base_lr


# each turns a scheduler's own config keys into the closed-form part LRSchedule.lr runs
def linear_lr(span, start_factor=1.0 / 3, end_factor=1.0):
    return ("linear", float(start_factor), float(end_factor))


def cosine_annealing_lr(span, T_max=None, eta_min=0.0, eta_min_ratio=None):
    tmax = int(T_max if T_max is not None else (span.end - span.begin) // span.scale) * span.scale
    eta = float(eta_min) if eta_min_ratio is None else span.base_lr * float(eta_min_ratio)
    return ("cosine", tmax, eta)


def constant_lr(span, factor=1.0 / 3):
    return ("constant", float(factor))


def multi_step_lr(span, milestones=(), gamma=0.1):
    return ("multistep", [int(m) * span.scale for m in milestones], float(gamma))


SCHEDULERS = {"LinearLR": linear_lr, "CosineAnnealingLR": cosine_annealing_lr,
              "ConstantLR": constant_lr, "MultiStepLR": multi_step_lr}


class LRSchedule:
    """mmengine's LinearLR / CosineAnnealingLR / ConstantLR / MultiStepLR as a closed-form
    function of the iteration (``convert_to_iter_based`` multiplies epochs by
    ``iters_per_epoch``; by_epoch schedules without it change once per epoch)."""

    def __init__(self, cfgs, base_lr, iters_per_epoch, max_iters):
        self.base_lr = float(base_lr)
        self.parts = []
        for i, c in enumerate(cfgs or []):
            where = f"param_scheduler[{i}]"
            if not isinstance(c, dict):
                raise UserError(f"{where}: expected a dict(type=...), got {c!r}")
            c = dict(c)
            by_epoch = c.pop("by_epoch", True)
            convert = c.pop("convert_to_iter_based", False)
            scale = iters_per_epoch if by_epoch else 1
            begin = int(c.pop("begin", 0)) * scale
            end = c.pop("end", None)
            end = max_iters if end is None else min(int(end) * scale, max_iters)
            step = 1 if (convert or not by_epoch) else iters_per_epoch
            part = build(SCHEDULERS, c, where, _Span(begin, end, scale, self.base_lr),
                         what="scheduler")
            self.parts.append((begin, end, step, part))

    def lr(self, it):
        """Learning rate at iteration ``it`` (0-based)."""
        lr = self.base_lr
        for begin, end, step, part in self.parts:
            if it < begin:
                continue
            t = (min(it, end - 1) - begin) // step * step
            span = max(end - begin, 1)
            kind = part[0]
            if kind == "linear":
                _, s, e = part
                lr = lr * (s + (e - s) * min(t, span - step) / max(span - step, 1)) if it < end else lr * e
            elif kind == "cosine":
                _, tmax, eta = part
                tt = min(t + (step if it >= end else 0), tmax)
                lr = eta + (lr - eta) * (1 + math.cos(math.pi * tt / tmax)) / 2 if tmax > 0 else lr
            elif kind == "constant":
                lr = lr * part[1] if it < end else lr
            elif kind == "multistep":
                _, ms, gamma = part
                lr = lr * gamma ** sum(1 for m in ms if it >= m)
        return lr
