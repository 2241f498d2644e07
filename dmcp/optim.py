"""Optimisers and learning-rate schedules from mmengine-style config dicts."""
import math

import numpy as np

from .models import _check_keys, _strip_scope
from .nn import SGD, Adam, BatchNorm2d, Linear, Conv2d
from .units import UserError


def param_groups(model, base_wd, paramwise_cfg=None):
    """One group per parameter with its decay multiplier (mmengine's paramwise_cfg:
    norm_decay_mult for BN weight/bias, bias_decay_mult for conv/linear biases)."""
    cfg = dict(paramwise_cfg or {})
    _check_keys("paramwise_cfg", cfg, ("norm_decay_mult", "bias_decay_mult", "custom_keys",
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


def build_optimizer(cfg, params_or_groups, where="optimizer"):
    cfg = dict(cfg)
    t = _strip_scope(cfg.pop("type", None))
    if t == "SGD":
        _check_keys(f"{where} (SGD)", cfg, ("lr", "momentum", "dampening", "weight_decay", "nesterov"))
        if "lr" not in cfg:
            raise UserError(f"{where}: 'lr' is required")
        return SGD(params_or_groups, **cfg)
    if t in ("Adam", "AdamW"):
        if t == "AdamW":
            raise UserError(f"{where}: AdamW is not supported (use Adam)")
        _check_keys(f"{where} (Adam)", cfg, ("lr", "betas", "eps", "weight_decay", "amsgrad"))
        if cfg.pop("amsgrad", False):
            raise UserError(f"{where}: amsgrad is not supported")
        return Adam(params_or_groups, **cfg)
    raise UserError(f"{where}: type {t!r} is not one of SGD, Adam")


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


def load_optimizer_state(opt, names, state):
    for g in opt.param_groups:
        for p in g["params"]:
            name = names[id(p)]
            if isinstance(opt, SGD):
                buf = state.get(f"{name}.momentum_buffer")
                if buf is not None:
                    opt.state[id(p)] = np.array(buf, np.float32)
            elif f"{name}.step" in state:
                opt.state[id(p)] = [int(state[f"{name}.step"]),
                                    np.array(state[f"{name}.exp_avg"], np.float32),
                                    np.array(state[f"{name}.exp_avg_sq"], np.float32)]


class LRSchedule:
    """mmengine's LinearLR / CosineAnnealingLR / ConstantLR / MultiStepLR as a closed-form
    function of the iteration (``convert_to_iter_based`` multiplies epochs by
    ``iters_per_epoch``; by_epoch schedules without it change once per epoch)."""

    def __init__(self, cfgs, base_lr, iters_per_epoch, max_iters):
        self.base_lr = float(base_lr)
        self.parts = []
        for i, c in enumerate(cfgs or []):
            c = dict(c)
            t = _strip_scope(c.pop("type", None))
            by_epoch = c.pop("by_epoch", True)
            convert = c.pop("convert_to_iter_based", False)
            scale = iters_per_epoch if by_epoch else 1
            begin = int(c.pop("begin", 0)) * scale
            end = c.pop("end", None)
            end = max_iters if end is None else min(int(end) * scale, max_iters)
            step = 1 if (convert or not by_epoch) else iters_per_epoch
            where = f"param_scheduler[{i}] ({t})"
            if t == "LinearLR":
                _check_keys(where, c, ("start_factor", "end_factor"))
                part = ("linear", float(c.get("start_factor", 1.0 / 3)), float(c.get("end_factor", 1.0)))
            elif t == "CosineAnnealingLR":
                _check_keys(where, c, ("T_max", "eta_min", "eta_min_ratio"))
                tmax = int(c.get("T_max", (end - begin) // scale)) * scale
                eta = float(c.get("eta_min", 0.0)) if c.get("eta_min_ratio") is None \
                    else self.base_lr * float(c["eta_min_ratio"])
                part = ("cosine", tmax, eta)
            elif t == "ConstantLR":
                _check_keys(where, c, ("factor",))
                part = ("constant", float(c.get("factor", 1.0 / 3)))
            elif t == "MultiStepLR":
                _check_keys(where, c, ("milestones", "gamma"))
                part = ("multistep", [int(m) * scale for m in c.get("milestones", [])],
                        float(c.get("gamma", 0.1)))
            else:
                raise UserError(f"{where}: scheduler type {t!r} is not one of LinearLR, "
                                f"CosineAnnealingLR, ConstantLR, MultiStepLR")
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
