"""Channel units: the search space of DMCP (DMCP.md sections 1-5, 8).

A unit is a set of layer outputs that share one width.  It owns the Markov
architecture parameters ``alpha``, knows its candidate widths, and sets the
active width of every conv that writes into it.  The ``Mutator`` holds a
model's units and does everything that spans them: width setting, sampling,
expected FLOPs and its gradient (in C), the budget loss, fix-subnet JSON.
"""
import json
import math
import warnings

import numpy as np

from . import _C
from .config import UserError
from .flops import flops_terms
from .nn import Parameter

PROB_TYPES = {"sigmoid": 0, "exp": 1}


def cfg_number(value, key, kind=float, minimum=None):
    """A config value as int or float, or a UserError naming the key, the value and
    the type expected (instead of a ValueError traceback)."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if ok and kind is int and isinstance(value, (float, np.floating)):
        ok = float(value).is_integer()              # (nan and inf are not)
    try:
        v = kind(value) if ok else None
    except OverflowError:                           # an int past float's range
        ok = False
    if not ok:
        want = "an integer" if kind is int else "a number"
        raise UserError(f"{key}={value!r}: expected {want}")
    if minimum is not None and v < minimum:
        raise UserError(f"{key}={value!r}: must be at least {minimum}")
    return v


def make_divisible(value, divisor=8, min_value=None, min_ratio=0.9):
    """mmcls/mmrazor channel rounding: the nearest multiple of ``divisor`` (at least
    ``min_value``), one step up when that loses more than 1 - ``min_ratio``."""
    min_value = min_value or divisor
    new = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new < min_ratio * value:
        new += divisor
    return new


class Rounding:
    """mmrazor's DMCPChannelUnit width rounding (``divisor``, ``min_value``,
    ``min_ratio`` = 0.5; choice_mode 'number'), clamped to the unit's channels.  The
    default divisor 1 keeps every width as it is.  ``min_value`` defaults to the
    divisor (mmrazor's is 1, which lets a narrow unit round to 1 channel)."""

    def __init__(self, divisor=1, min_value=None, min_ratio=0.5, where="channel_unit_cfg.default_args"):
        self.divisor = cfg_number(divisor, f"{where}.divisor", int)
        if not 1 <= self.divisor < 2 ** 31:
            raise UserError(f"{where}.divisor={divisor!r}: must be a positive integer below 2**31")
        self.min_value = cfg_number(self.divisor if min_value is None else min_value,
                                    f"{where}.min_value", int, 1)
        self.min_ratio = cfg_number(min_ratio, f"{where}.min_ratio", float, 0.0)

    @classmethod
    def from_cfg(cls, channel_unit_cfg):
        """From a mutator's ``channel_unit_cfg`` (its ``default_args``)."""
        ucfg = channel_unit_cfg or {}
        args = dict(ucfg.get("default_args") or {}) if isinstance(ucfg, dict) else {}
        where = "model.mutator_cfg.channel_unit_cfg.default_args"
        mode = args.pop("choice_mode", "number")
        if mode != "number":
            raise UserError(f"{where}.choice_mode={mode!r}: only 'number' is supported")
        bad = sorted(set(args) - {"divisor", "min_value", "min_ratio"})
        if bad:
            raise UserError(f"{where}: unknown key(s) {', '.join(map(repr, bad))}; accepted: "
                            f"choice_mode, divisor, min_value, min_ratio")
        return cls(where=where, **args)

    def __call__(self, width, num_channels):
        if self.divisor == 1:
            return int(width)
        w = make_divisible(int(width), self.divisor, self.min_value, self.min_ratio)
        return int(min(w, num_channels))

    def init_args(self, num_channels):
        return {"num_channels": num_channels, "choice_mode": "number", "divisor": self.divisor,
                "min_value": self.min_value, "min_ratio": self.min_ratio}


class ChannelUnit:
    """One width shared by a set of layer outputs (see module docstring)."""

    def __init__(self, name, num_channels):
        self.name = name
        self.num_channels = int(num_channels)
        self.width = self.num_channels
        self.out_convs = []          # convs (and linears) whose outputs form this unit
        self.min_ch, self.group_size, self.ngroups = self.num_channels, 0, 0
        self.alpha = Parameter(np.zeros(0, np.float32))
        self.P = np.zeros(0, np.float32)
        self.dP = np.zeros(0, np.float32)
        self.gate_on = False

    @property
    def key(self):
        """mmrazor's unit key: '<first layer>_(0, C)_C'."""
        return f"{self.name}_(0, {self.num_channels})_{self.num_channels}"

    def set_groups(self, min_rate, max_rate, offset):
        """DMCP.md section 1: g = floor(offset*C/max_rate), n = floor((max-min)/offset + 1e-4),
        m = C - g*n.  A unit too narrow for one channel per group is not pruned."""
        c = self.num_channels
        g = int(math.floor(offset * c / max_rate))
        n = int(math.floor((max_rate - min_rate) / offset + 1e-4))
        if g < 1 or n < 1 or c - g * n < 1:
            g, n = 0, 0
        self.group_size, self.ngroups, self.min_ch = g, n, c - g * n
        self.alpha = Parameter(np.zeros(n, np.float32))
        self.P = np.ones(n, np.float32)
        self.dP = np.zeros(n, np.float32)

    def candidates(self):
        return [self.min_ch + k * self.group_size for k in range(self.ngroups + 1)]

    def set_width(self, width):
        self.width = int(width)
        for layer in self.out_convs:
            layer.out_active = None if self.width == layer.out_channels else self.width

    def compute_probs(self, prob_type):
        if self.ngroups:
            _C.markov_probs_forward(self.P, self.alpha.data, prob_type)

    def expected_width(self):
        return self.min_ch + self.group_size * float(self.P.sum(dtype=np.float64))

    def alpha_backward(self, prob_type):
        """Turn the gates' dL/dP into dL/dalpha (accumulated in alpha.grad)."""
        if self.ngroups:
            _C.markov_probs_backward(self.alpha.grad, self.dP, self.P, self.alpha.data, prob_type)
            self.dP.fill(0.0)


def budget_loss(flops_mflops, target_mflops, loss_type="log_l1"):
    """DMCP.md section 5, both arguments in MFLOPs.  Returns (loss, dloss/dflops)."""
    f, t = float(flops_mflops), float(target_mflops)
    diff = f - t
    r = 0.1 if abs(diff) > 200 else 1.0
    if loss_type == "log_l1":
        if f < 0.95 * t:
            return math.log(r * abs(diff)), 1.0 / diff
        if f < t:
            return 0.0, 0.0
        d = f - 0.95 * t
        return math.log(r * abs(d)), 1.0 / d
    if loss_type == "l1":
        return abs(diff), float(np.sign(diff))
    if loss_type == "l2":
        return diff * diff, 2.0 * diff
    if loss_type == "inverted_log_l1":
        a = abs(diff) + 1e-5
        return math.log(a), float(np.sign(diff)) / a
    raise UserError(f"flops_loss_type '{loss_type}' is not one of log_l1, l1, l2, inverted_log_l1")


class Mutator:
    """The units of one model and the operations across them."""

    def __init__(self, model, pruning_cfg=(0.1, 1.0, 0.05), prob_type="exp", rounding=None):
        self.rounding = rounding or Rounding()
        if prob_type not in PROB_TYPES:
            raise UserError(f"prob_type '{prob_type}' is not one of {sorted(PROB_TYPES)}")
        if not isinstance(pruning_cfg, (list, tuple)) or len(pruning_cfg) != 3:
            raise UserError(f"pruning_cfg {pruning_cfg!r}: expected (min_rate, max_rate, offset)")
        min_rate, max_rate, offset = (cfg_number(v, f"pruning_cfg[{i}]")
                                      for i, v in enumerate(pruning_cfg))
        if not (0.0 < min_rate < max_rate <= 1.0 and 0.0 < offset <= max_rate - min_rate):
            raise UserError(f"pruning_cfg {tuple(pruning_cfg)} must be (min_rate, max_rate, offset) "
                            f"with 0 < min_rate < max_rate <= 1 and 0 < offset <= max_rate - min_rate")
        self.model = model
        self.pruning_cfg = (min_rate, max_rate, offset)
        self.prob_type = PROB_TYPES[prob_type]
        self.units = list(model.units.values())
        for u in self.units:
            u.set_groups(min_rate, max_rate, offset)
        self._pack_tables()

    # ---- tables for the C expected-FLOPs routine
    def _pack_tables(self):
        offsets = np.cumsum([0] + [u.ngroups for u in self.units])
        self.nalpha = int(offsets[-1])
        self.unit_table = np.array([[offsets[i], u.ngroups, u.min_ch, u.group_size]
                                    for i, u in enumerate(self.units)], np.int32).reshape(-1, 4)
        self._offsets = offsets

    def arch_parameters(self):
        return [u.alpha for u in self.units if u.ngroups]

    def alpha_flat(self):
        return np.concatenate([u.alpha.data for u in self.units] + [np.zeros(0, np.float32)])

    def zero_alpha_grad(self):
        for u in self.units:
            u.alpha.zero_grad()

    # ---- widths
    def set_widths(self, mode, rng=None, choices=None):
        """mode: 'max', 'min', 'random', 'direct', 'expected', or 'choice' with
        ``choices`` {unit name or key: width}."""
        rng = rng if rng is not None else np.random.default_rng()
        if mode == "choice":
            self.apply_choices(choices)
            return
        for u in self.units:
            u.set_width(self.rounding(self._pick(u, mode, rng), u.num_channels))

    def _pick(self, u, mode, rng):
        if mode == "max" or not u.ngroups:
            return u.num_channels
        if mode == "min":
            return u.min_ch
        if mode == "random":
            return u.min_ch + u.group_size * int(rng.integers(0, u.ngroups + 1))
        u.compute_probs(self.prob_type)
        if mode == "direct":
            p = self.keep_probs(u)
            keep = 0
            for k in range(u.ngroups):
                if rng.random() >= p[k]:
                    break
                keep += 1
            return u.min_ch + u.group_size * keep
        if mode == "expected":
            k = int(round((u.expected_width() - u.min_ch) / u.group_size))
            return u.min_ch + u.group_size * min(max(k, 0), u.ngroups)
        raise UserError(f"width mode '{mode}' is not one of max, min, random, direct, expected, choice")

    def keep_probs(self, u):
        """Conditional keep probabilities p_k of a unit (DMCP.md section 2)."""
        a = u.alpha.data.astype(np.float64)
        if self.prob_type == PROB_TYPES["sigmoid"]:
            return 1.0 / (1.0 + np.exp(-a))
        return np.exp(-np.maximum(a, 0.0))

    def widths(self):
        return {u.name: u.width for u in self.units}

    def set_gates(self, on):
        """Architecture mode (DMCP.md section 3): full widths, every BN output
        of a unit scaled by its marginal keep probabilities."""
        for u in self.units:
            if on:
                u.set_width(u.num_channels)
                u.compute_probs(self.prob_type)
                u.dP.fill(0.0)
            u.gate_on = bool(on) and u.ngroups > 0

    def alpha_backward(self):
        for u in self.units:
            u.alpha_backward(self.prob_type)

    # ---- FLOPs
    def flops_terms(self, input_shape):
        return flops_terms(self.model, input_shape, self.units)

    def current_flops(self, input_shape):
        """Conv+linear MACs at the current widths."""
        widths = np.array([u.width for u in self.units], np.float64)
        return _C.flops_of_widths(widths, self.flops_terms(input_shape))

    def expected_flops(self, input_shape, grad_scale=None):
        """E[F] in MACs; with grad_scale, adds grad_scale * dE[F]/dalpha into alpha.grad."""
        alpha = self.alpha_flat()
        terms = self.flops_terms(input_shape)
        if grad_scale is None:
            return _C.flops_expected(alpha, self.unit_table, terms, self.prob_type)
        dalpha = np.zeros_like(alpha)
        f = _C.flops_expected(alpha, self.unit_table, terms, self.prob_type, dalpha, float(grad_scale))
        for i, u in enumerate(self.units):
            if u.ngroups:
                u.alpha.grad += dalpha[self._offsets[i]:self._offsets[i + 1]]
        return f

    def expected_channels(self):
        for u in self.units:
            u.compute_probs(self.prob_type)
        return {u.name: u.expected_width() for u in self.units}

    # ---- fix-subnet JSON (mmrazor's format)
    def export_subnet(self, demo_input=(1, 3, 224, 224)):
        units = {}
        for u in self.units:
            units[u.key] = {"init_args": self.rounding.init_args(u.num_channels),
                            "choice": int(u.width)}
        return {"type": "DMCPChannelMutator",
                "channel_unit_cfg": {"type": "DMCPChannelUnit",
                                     "default_args": {"choice_mode": "number"}, "units": units},
                "parse_cfg": {"type": "ChannelAnalyzer", "demo_input": list(demo_input),
                              "tracer_type": "BackwardTracer"}}

    def apply_choices(self, choices, source="fix_subnet"):
        """choices: {unit name or key: width}; validated, missing units stay full."""
        by_name = {u.name: u for u in self.units}
        by_key = {u.key: u for u in self.units}
        seen = set()
        for key, width in choices.items():
            u = by_key.get(key) or by_name.get(key) or by_name.get(key.split("_(0, ")[0])
            if u is None:
                raise UserError(f"{source}: unit '{key}' does not exist in this model "
                                f"(known units: {', '.join(list(by_name)[:4])}, ...)")
            if not isinstance(width, (int, np.integer)) or isinstance(width, bool):
                raise UserError(f"{source}: unit '{key}' choice must be an integer, got {width!r}")
            if not 1 <= width <= u.num_channels:
                raise UserError(f"{source}: unit '{key}' choice {width} is outside "
                                f"1..{u.num_channels}{wider_hint(width, u.num_channels)}")
            seen.add(u.name)
            u.set_width(self.rounding(width, u.num_channels))
        missing = [u.name for u in self.units if u.name not in seen]
        for name in missing:
            by_name[name].set_width(by_name[name].num_channels)
        if missing:
            warnings.warn(f"{source}: {len(missing)} unit(s) not given keep full width: "
                          f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")


def wider_hint(width, num_channels):
    """What a choice above its unit's channels usually means."""
    if isinstance(width, (int, np.integer)) and width > num_channels:
        return ("; was the structure searched on a wider supernet? (mmrazor's published "
                "MobileNetV2 structures need MobileNetV2 widen_factor=1.5: "
                "configs/dmcp_mbv2_1.5x_subnet.py retrains the 100M one)")
    return ""


def load_subnet(fix_subnet):
    """Parse a fix-subnet JSON (path or dict) into {unit key: width}, with clear errors."""
    source = "fix_subnet"
    if isinstance(fix_subnet, str):
        source = fix_subnet
        try:
            with open(fix_subnet, encoding="utf-8") as f:
                fix_subnet = json.load(f)
        except FileNotFoundError:
            raise UserError(f"fix_subnet file '{source}' does not exist") from None
        except IsADirectoryError:
            raise UserError(f"fix_subnet '{source}' is a directory, not a JSON file") from None
        except UnicodeDecodeError:
            raise UserError(f"{source}: not a UTF-8 text file (a fix-subnet JSON is text)") from None
        except json.JSONDecodeError as e:
            raise UserError(f"{source}: not valid JSON ({e})") from None
        except RecursionError:
            raise UserError(f"{source}: JSON nested too deeply to be a fix-subnet file") from None
    if not isinstance(fix_subnet, dict):
        raise UserError(f"{source}: expected a JSON object, got {type(fix_subnet).__name__}")
    if "channel_unit_cfg" in fix_subnet:
        ucfg = fix_subnet["channel_unit_cfg"]
        units = ucfg.get("units") if isinstance(ucfg, dict) else None
    else:
        units = fix_subnet.get("units", fix_subnet)
    if not isinstance(units, dict) or not units:
        raise UserError(f"{source}: no 'channel_unit_cfg.units' mapping found")
    choices, declared = {}, {}
    for key, entry in units.items():
        if isinstance(entry, dict):
            if "choice" not in entry:
                raise UserError(f"{source}: unit '{key}' has no 'choice'")
            choices[key] = entry["choice"]
            init = entry.get("init_args", {})
            if not isinstance(init, dict):
                raise UserError(f"{source}: unit '{key}' 'init_args' must be an object, got {init!r}")
            n = init.get("num_channels")
            if n is not None:
                declared[key] = n
            choice = entry["choice"]
            if init.get("divisor", 1) != 1 and isinstance(choice, (int, np.integer)) \
                    and not isinstance(choice, bool) and 1 <= choice < 2 ** 31:
                # (other choices are not widths: apply_choices rejects them by name)
                # mmrazor rounds a unit's choice when it is set: so does loading it
                where = f"{source}: unit '{key}' init_args"
                rounding = Rounding(init["divisor"], init.get("min_value"),
                                    init.get("min_ratio", 0.5), where)
                limit = n if isinstance(n, (int, np.integer)) else entry["choice"]
                choices[key] = rounding(entry["choice"], max(limit, entry["choice"]))
        else:
            choices[key] = entry
    return choices, declared, source


def rebase_subnet(fix_subnet, mutator):
    """A fix-subnet (file or dict) written for another width of the same network,
    rewritten for ``mutator``'s supernet: unit keys and ``num_channels`` become
    this supernet's, the choices (absolute channel counts) stay.  mmrazor's
    converted MobileNetV2 structures carry 1.0x keys with choices searched on a
    1.5x supernet; this gives the file a 1.5x MobileNetV2 loads.  Every unit must
    be named, and every choice must fit its new unit."""
    choices, _, source = load_subnet(fix_subnet)
    by_name = {u.name: u for u in mutator.units}
    units, seen = {}, set()
    for key, width in choices.items():
        u = by_name.get(key.split("_(0, ")[0])
        if u is None:
            raise UserError(f"{source}: unit '{key}' does not exist in this model "
                            f"(known units: {', '.join(list(by_name)[:4])}, ...)")
        if not isinstance(width, (int, np.integer)) or isinstance(width, bool) \
                or not 1 <= width <= u.num_channels:
            raise UserError(f"{source}: unit '{key}' choice {width!r} does not fit "
                            f"'{u.name}' (1..{u.num_channels})")
        seen.add(u.name)
        units[u.key] = dict(init_args=dict(num_channels=u.num_channels, choice_mode="number",
                                           divisor=1, min_value=1, min_ratio=0.5),
                            choice=int(width))
    missing = [n for n in by_name if n not in seen]
    if missing:
        raise UserError(f"{source}: names no width for {len(missing)} unit(s) of this model: "
                        f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return dict(type="DMCPChannelMutator",
                channel_unit_cfg=dict(type="DMCPChannelUnit",
                                      default_args=dict(choice_mode="number"), units=units))


def apply_subnet(mutator, fix_subnet):
    """Load a fix-subnet (file or dict) onto a supernet's units, checking num_channels."""
    choices, declared, source = load_subnet(fix_subnet)
    by_key = {u.key: u for u in mutator.units}
    by_name = {u.name: u for u in mutator.units}
    for key, n in declared.items():
        u = by_key.get(key) or by_name.get(key.split("_(0, ")[0])
        if u is not None and n != u.num_channels:
            raise UserError(f"{source}: unit '{key}' declares num_channels {n!r}, " + (
                f"but the model's unit has {u.num_channels}" if isinstance(n, int)
                and not isinstance(n, bool) else f"a {type(n).__name__}, not an integer"))
    mutator.apply_choices(choices, source)
    return mutator.widths()
