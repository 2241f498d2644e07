"""The DMCP algorithm in one place (DMCP.md sections 5-8): model building from
configs, the sandwich-rule weight step with in-place distillation, the
architecture step, and sampling of the pruned structure.
"""
import warnings

import numpy as np

from .config import _plain, build, check_keys, signature_keys, strip_scope
from .models import ImageClassifier
from .nn import KLDivergence
from .units import (PROB_TYPES, Mutator, Rounding, UserError, apply_subnet, budget_loss, cfg_number,
                    load_subnet, wider_hint)

STRATEGIES = ("max", "min", "random", "direct", "scheduled_random", "arch_random")


def build_classifier(cfg, seed=0, widths=None, where="architecture"):
    """An ImageClassifier from its config dict; ``widths`` (unit name -> width) prunes it."""
    return build({"ImageClassifier": ImageClassifier}, _plain(cfg), where, what="architecture",
                 default="ImageClassifier", seed=seed, widths=widths)


def demo_input_shape(mutator_cfg, default=(3, 224, 224)):
    demo = (mutator_cfg or {}).get("parse_cfg", {}).get("demo_input")
    return tuple(int(v) for v in demo[1:]) if demo else tuple(default)


def build_pruned(supernet_cfg, fix_subnet, seed=0, supernet=None):
    """A standalone pruned ImageClassifier: every unit created at its chosen width.
    With ``supernet`` given, its weights are sliced into the pruned model."""
    probe = build_classifier(supernet_cfg, seed)
    choices, declared, source = load_subnet(fix_subnet)
    by_key = {u.key: u for u in probe.units.values()}
    by_name = probe.units
    widths = {}
    for key, w in choices.items():
        u = by_key.get(key) or by_name.get(key) or by_name.get(key.split("_(0, ")[0])
        if u is None:
            raise UserError(f"{source}: unit '{key}' does not exist in this model")
        n = declared.get(key)
        if n is not None and n != u.num_channels:
            raise UserError(f"{source}: unit '{key}' declares num_channels {n!r}, " + (
                f"but the model's unit has {u.num_channels}" if isinstance(n, int)
                and not isinstance(n, bool) else f"a {type(n).__name__}, not an integer"))
        if not isinstance(w, (int, np.integer)) or isinstance(w, bool) or not 1 <= w <= u.num_channels:
            raise UserError(f"{source}: unit '{key}' choice {w!r} is outside "
                            f"1..{u.num_channels}{wider_hint(w, u.num_channels)}")
        widths[u.name] = int(w)
    missing = [u.name for u in probe.units.values() if u.name not in widths]
    for name in missing:        # full, not derived from a pruned input (MobileNetV2's hidden units)
        widths[name] = probe.units[name].num_channels
    if missing:
        warnings.warn(f"{source}: {len(missing)} unit(s) not given keep full width: "
                      f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    model = build_classifier(supernet_cfg, seed, widths=widths)
    if supernet is not None:
        supernet = getattr(supernet, "architecture", supernet)
        model.load_state_dict(supernet.state_dict(), slice_channels=True)
    return model


def pruned_subnet(model_cfg):
    """(supernet ImageClassifier cfg, fix_subnet) when a model dict describes a pruned
    subnet, else None: mmrazor's ``sub_model``, or a DMCP dict that carries a
    ``fix_subnet`` (newer mmrazor subnet configs set it there, or assign
    ``model['fix_subnet']`` over the supernet config).  get_flops.py, export.py,
    test.py and sample_subnets.py ask this function; build_algorithm_model builds the
    same pair (``sub_model``, ``dmcp_model``), so training runs what they count."""
    kind = strip_scope(model_cfg.get("type", "ImageClassifier"))
    if kind == "sub_model":
        if "cfg" not in model_cfg:
            raise UserError("sub_model needs 'cfg' (the supernet)")
        return model_cfg["cfg"], model_cfg.get("fix_subnet")
    if kind in ("DMCP", "DMCPDDP") and model_cfg.get("fix_subnet") is not None:
        if "architecture" not in model_cfg:
            raise UserError("DMCP needs 'architecture' (the supernet ImageClassifier)")
        return model_cfg["architecture"], model_cfg["fix_subnet"]
    return None


def supernet_of(cfg):
    """(supernet ImageClassifier cfg, the config's own fix_subnet or None, its rounding)
    for a DMCP, sub_model or plain classifier config.  A pruned subnet's own structure
    is taken as written (no rounding), as build_pruned builds it."""
    model = cfg.get("model")
    if not isinstance(model, dict):
        raise UserError(f"{cfg.filename}: no 'model' dict in the config")
    sub = pruned_subnet(model)
    if sub is not None:
        return sub[0], sub[1], Rounding()
    if strip_scope(model.get("type", "ImageClassifier")) in ("DMCP", "DMCPDDP"):
        if "architecture" not in model:
            raise UserError("DMCP needs 'architecture' (the supernet ImageClassifier)")
        mcfg = model.get("mutator_cfg") or {}
        return model["architecture"], None, Rounding.from_cfg(mcfg.get("channel_unit_cfg"))
    return model, None, Rounding()


class Structure:
    """A supernet's units at a pruned structure's widths, with its FLOPs before and
    after re-rounding to ``divisor``."""

    def __init__(self, arch_cfg, fix_subnet, input_shape, rounding=None, divisor=None):
        self.supernet = build_classifier(arch_cfg)
        self.mutator = Mutator(self.supernet, rounding=rounding)
        self.input_shape = tuple(input_shape)
        self.full_mflops = self.mutator.current_flops(self.input_shape) / 1e6
        if fix_subnet is not None:
            apply_subnet(self.mutator, fix_subnet)
        self.mflops_given = self.mutator.current_flops(self.input_shape) / 1e6
        self.rerounded = {}         # unit name -> (given width, rounded width)
        if divisor is not None:
            self.mutator.rounding = Rounding(divisor, where="--divisor")
            for u in self.mutator.units:
                w = self.mutator.rounding(u.width, u.num_channels)
                if w != u.width:
                    self.rerounded[u.name] = (u.width, w)
                u.set_width(w)
        self.mflops = self.mutator.current_flops(self.input_shape) / 1e6
        self.widths = self.mutator.widths()

    def fix_subnet(self):
        """The structure as mmrazor's fix-subnet JSON (a dict)."""
        return self.mutator.export_subnet((1,) + self.input_shape)


class DMCP:
    """A supernet (``architecture``) with its mutator and the DMCP schedule settings.
    ``model(x)`` / ``model.backward(g)`` run the architecture at its current widths."""

    def __init__(self, architecture, mutator_cfg=None, strategy=("max", "min", "scheduled_random",
                 "arch_random"), arch_start_train=5000, arch_train_freq=500, distillation_times=10000,
                 flop_loss_weight=0.1, flops_loss_type="log_l1", target_flops=2000, distiller=None,
                 data_preprocessor=None, init_cfg=None, _scope_=None, seed=0, **unused):
        check_keys("model (DMCP)", unused, signature_keys(DMCP.__init__, ("seed",)))
        self.architecture = build_classifier(architecture, seed)
        mcfg = _plain(mutator_cfg or {})
        check_keys("mutator_cfg", mcfg, ("type", "channel_unit_cfg", "pruning_cfg", "parse_cfg",
                                          "prob_type"))
        self.input_shape = demo_input_shape(mcfg)
        self.mutator = Mutator(self.architecture, mcfg.get("pruning_cfg", (0.1, 1.0, 0.05)),
                               mcfg.get("prob_type", "exp"),
                               Rounding.from_cfg(mcfg.get("channel_unit_cfg")))
        bad = [s for s in strategy if s not in STRATEGIES]
        if bad or not strategy:
            raise UserError(f"DMCP strategy {list(strategy)}: unknown entries {bad}; accepted: {STRATEGIES}")
        self.strategy = list(strategy)
        self.arch_start_train = cfg_number(arch_start_train, "model.arch_start_train", int, 0)
        self.arch_train_freq = cfg_number(arch_train_freq, "model.arch_train_freq", int, 1)
        self.distillation_times = cfg_number(distillation_times, "model.distillation_times", int)
        self.flop_loss_weight = cfg_number(flop_loss_weight, "model.flop_loss_weight", float, 0.0)
        self.flops_loss_type = flops_loss_type
        budget_loss(1.0, 1.0, flops_loss_type)      # validates the loss type now
        self.target_mflops = cfg_number(target_flops, "model.target_flops")
        if not self.target_mflops > 0:
            raise UserError(f"model.target_flops={target_flops!r}: must be a positive number of "
                            f"MFLOPs")
        self.tau, kd_weight = distill_settings(distiller)
        self.kd = KLDivergence(self.tau, kd_weight)
        self.random_prob = 1.0          # q of 'scheduled_random'
        self.stall_steps = 50           # arch steps without any alpha gradient before a warning
        self._stalled = {}              # unit name -> consecutive arch steps with zero dalpha
        self._stall_warned = False

    def check_alpha_flow(self):
        """After an architecture step's gradient: count, per unit, the consecutive steps
        in which none of its alphas received gradient (exp: every alpha < 0, where
        p = 1 is flat; sigmoid: p rounded to exactly 1 in float32).  Returns a warning
        once, when more than half of the searchable units have been stuck for
        ``stall_steps`` steps; None otherwise."""
        units = [u for u in self.mutator.units if u.ngroups]
        for u in units:
            self._stalled[u.name] = 0 if u.alpha.grad.any() else self._stalled.get(u.name, 0) + 1
        stuck = [u for u in units if self._stalled[u.name] >= self.stall_steps]
        if self._stall_warned or not units or 2 * len(stuck) <= len(units):
            return None
        self._stall_warned = True
        kind = ("every alpha is below 0, where exp(-max(alpha, 0)) = 1 is flat"
                if self.mutator.prob_type == PROB_TYPES["exp"] else
                "the keep probabilities are saturated to 1.0 in float32 (alpha above ~17)")
        names = ", ".join(u.name for u in stuck[:4]) + (" ..." if len(stuck) > 4 else "")
        return (f"DMCP: {len(stuck)} of {len(units)} units got no architecture gradient for "
                f"{self.stall_steps} arch steps ({kind}): {names}. The search is stuck there; "
                f"lower the mutator's learning rate or re-initialise the alphas.")

    @property
    def units(self):
        return self.architecture.units

    def __call__(self, x):
        return self.architecture.forward(x)

    def forward(self, x):
        return self.architecture.forward(x)

    def backward(self, g, need_dinp=True):
        return self.architecture.backward(g, need_dinp)

    def named_parameters(self):
        return self.architecture.named_parameters()

    def state_dict(self):
        d = dict(self.architecture.state_dict())
        for u in self.mutator.units:
            if u.ngroups:
                d[f"mutator.{u.name}.alpha"] = u.alpha.data
        return d

    def load_state_dict(self, state, strict=True):
        state = dict(state) if not isinstance(state, str) else state
        if isinstance(state, dict):
            for u in self.mutator.units:
                k = f"mutator.{u.name}.alpha"
                if k in state:
                    u.alpha.data[...] = state.pop(k)
        return self.architecture.load_state_dict(state, strict)

    def train(self, mode=True):
        self.architecture.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def expected_mflops(self, grad_scale=None):
        return self.mutator.expected_flops(self.input_shape, grad_scale) / 1e6

    def budget_loss_and_grad(self):
        """flop_loss_weight * budget loss of E[F] (MFLOPs) and its gradient into alpha.grad."""
        f = self.expected_mflops()
        loss, dloss = budget_loss(f, self.target_mflops, self.flops_loss_type)
        if dloss:
            self.expected_mflops(grad_scale=self.flop_loss_weight * dloss / 1e6)
        return self.flop_loss_weight * loss, f


def distill_settings(distiller):
    """(tau, loss_weight) of the in-place distillation a DMCP ``distiller`` describes.
    dmcp implements what mmrazor's DMCP configs ask for: a ConfigurableDistiller with
    one KLDivergence loss from the max subnet's logits (recorder 'fc') to each smaller
    subnet's; any other distiller, loss or recorder is refused by name."""
    if not distiller:
        return 1.0, 1.0
    where = "model.distiller"
    if not isinstance(distiller, dict):
        raise UserError(f"{where}: expected dict(type='ConfigurableDistiller', ...), got {distiller!r}")
    cfg = dict(distiller)
    t = strip_scope(cfg.pop("type", None))
    if t != "ConfigurableDistiller":
        raise UserError(f"{where}: type {t!r} is not supported; dmcp runs mmrazor's in-place "
                        f"distillation, type='ConfigurableDistiller' with a KLDivergence loss")
    check_keys(f"{where} (ConfigurableDistiller)", cfg, ("distill_losses", "loss_forward_mappings",
                                                         "student_recorders", "teacher_recorders"))
    losses = dict(cfg.get("distill_losses") or {})
    if len(losses) != 1:
        raise UserError(f"{where}.distill_losses: dmcp runs exactly one loss (KLDivergence), got "
                        f"{sorted(losses) or 'none'}")
    (name, loss), = losses.items()
    where = f"{where}.distill_losses.{name}"
    loss = dict(loss)
    lt = strip_scope(loss.pop("type", None))
    if lt != "KLDivergence":
        raise UserError(f"{where}: loss type {lt!r} is not supported (KLDivergence)")
    check_keys(f"{where} (KLDivergence)", loss, ("tau", "loss_weight", "reduction",
                                                 "teacher_detach"))
    if loss.get("reduction", "batchmean") != "batchmean" or loss.get("teacher_detach", True) is not True:
        raise UserError(f"{where}: only reduction='batchmean' with teacher_detach=True is supported")
    for arg, m in dict((cfg.get("loss_forward_mappings") or {}).get(name) or {}).items():
        if dict(m).get("recorder", "fc") != "fc":
            raise UserError(f"model.distiller.loss_forward_mappings.{name}.{arg}: recorder "
                            f"{m['recorder']!r}: dmcp distils the classifier's logits only ('fc')")
    tau = cfg_number(loss.get("tau", 1.0), f"{where}.tau")
    if not tau > 0:
        raise UserError(f"{where}.tau={tau!r}: must be positive")
    return tau, cfg_number(loss.get("loss_weight", 1.0), f"{where}.loss_weight", float, 0.0)


# mmrazor's sub_model(cfg, fix_subnet, mode, prefix, extra_prefix, init_weight_from_supernet,
# init_cfg) as a model dict writes it (data_preprocessor and _scope_ are the builder's)
SUB_MODEL_KEYS = ("cfg", "fix_subnet", "mode", "prefix", "extra_prefix",
                  "init_weight_from_supernet", "init_cfg", "data_preprocessor", "_scope_")


def sub_model(cfg, fix_subnet, mode="mutator", prefix="", extra_prefix="",
              init_weight_from_supernet=False, init_cfg=None, data_preprocessor=None, seed=0,
              **inherited):
    """mmrazor's sub_model: the supernet ``cfg`` built at ``fix_subnet``'s widths.
    mmrazor's subnet configs write ``model = dict(type='sub_model', cfg=_base_.supernet,
    ...)`` over a DMCP supernet config without ``_delete_=True``, so the base's DMCP
    keys (architecture, target_flops, ...) are merged in, and mmrazor's sub_model
    swallows them; so does this, for exactly DMCP's own parameters.  Any other
    unknown key fails, with a did-you-mean against sub_model's keys."""
    dmcp_keys = set(signature_keys(DMCP.__init__, ("seed",))) - set(SUB_MODEL_KEYS)
    check_keys("sub_model", [k for k in inherited if k not in dmcp_keys], SUB_MODEL_KEYS)
    return build_pruned(cfg, fix_subnet, seed)


def dmcp_model(architecture, fix_subnet=None, seed=0, **kwargs):
    """mmrazor's DMCP: the supernet search.  With a ``fix_subnet`` the dict describes
    the pruned subnet (see ``pruned_subnet``), built as sub_model builds it; the
    search keys are then inert, but must still be DMCP's."""
    check_keys("model (DMCP)", ["architecture", "fix_subnet"] + list(kwargs),
               signature_keys(DMCP.__init__, ("seed",)) + ["fix_subnet"])
    if fix_subnet is not None:
        return build_pruned(architecture, fix_subnet, seed)
    return DMCP(architecture, seed=seed, **kwargs)


def image_classifier(seed=0, **cfg):
    return build_classifier(cfg, seed, where="model")


MODELS = {"ImageClassifier": image_classifier, "DMCP": dmcp_model, "DMCPDDP": dmcp_model,
          "sub_model": sub_model}


def build_algorithm_model(cfg, seed=0):
    """ImageClassifier, DMCP (the supernet, or its pruned subnet when the dict carries a
    fix_subnet) or sub_model from a config dict."""
    return build(MODELS, _plain(cfg), "model", what="model", default="ImageClassifier",
                 seed=seed)


# ---------------------------------------------------------------- training steps

def _subnet_mode(model, mode, it, rng):
    """Resolve arch_random / scheduled_random (DMCP.md section 6)."""
    started = it >= model.arch_start_train
    if mode == "arch_random":
        return "direct" if started else "random"
    if mode == "scheduled_random":
        return "direct" if started and rng.random() >= model.random_prob else "random"
    return mode


def dmcp_train_step(model, optimizer, arch_optimizer, x, y, it, rng, dist):
    """One DMCP iteration: the sandwich of ``strategy`` subnets on the same batch with
    in-place distillation, one weight step; then, on schedule, one architecture step."""
    net, mut = model.architecture, model.mutator
    ce = net.loss_module
    stats = {}
    optimizer.zero_grad()
    teacher = None
    for idx, mode in enumerate(model.strategy):
        resolved = _subnet_mode(model, mode, it, rng)
        mut.set_widths(resolved, rng)
        logits = net.forward(x)
        if mode == "max" or teacher is None or it < model.distillation_times:
            loss = ce.forward(logits, y)
            d = ce.backward()
            if mode == "max":
                teacher = logits.copy()
        else:
            loss = model.kd.forward(logits, teacher)
            d = model.kd.backward()
        net.backward(d, need_dinp=False)
        key = f"loss_{mode}" if mode not in stats else f"loss_{mode}_{idx}"
        stats[key] = loss
    dist.allreduce_grads(optimizer_params(optimizer))
    optimizer.step()
    model.random_prob *= 0.9999
    if it >= model.arch_start_train and (it - model.arch_start_train) % model.arch_train_freq == 0:
        stats.update(arch_step(model, arch_optimizer, x, y, dist))
    else:
        mut.set_widths("max")
    return stats


def arch_step(model, arch_optimizer, x, y, dist):
    """DMCP.md section 7: full width, gates on, BN frozen; task loss + weighted budget loss
    backpropagated into alpha only."""
    net, mut = model.architecture, model.mutator
    ce = net.loss_module
    mut.zero_alpha_grad()
    mut.set_gates(True)
    net.eval()
    weights = [p for _, p in net.named_parameters() if p.requires_grad]    # frozen ones stay so
    for p in weights:           # only the alphas learn here: skip every weight gradient
        p.requires_grad = False
    try:
        logits = net.forward(x)
        task = ce.forward(logits, y)
        net.backward(ce.backward(), need_dinp=False)
        mut.alpha_backward()
        budget, flops = model.budget_loss_and_grad()
    finally:
        for p in weights:
            p.requires_grad = True
        mut.set_gates(False)
        net.train()
    dist.allreduce_grads(mut.arch_parameters())
    stall = model.check_alpha_flow()
    if stall:
        warnings.warn(stall, RuntimeWarning, stacklevel=2)
    arch_optimizer.step()
    net.zero_grad()           # the weights are not trained by this step
    return {"arch_loss": task + budget, "flops_loss": budget, "expected_mflops": flops}


def optimizer_params(opt):
    return [p for g in opt.param_groups for p in g["params"]]


def plain_train_step(net, optimizer, x, y, dist):
    optimizer.zero_grad()
    logits = net.forward(x)
    loss = net.loss_module.forward(logits, y)
    net.backward(net.loss_module.backward(), need_dinp=False)
    dist.allreduce_grads(optimizer_params(optimizer))
    optimizer.step()
    return {"loss": loss}


# ---------------------------------------------------------------- sampling (DMCP.md section 8)

def sample_subnets(model, num, rng, max_draws=2000, histogram_draws=500, target_mflops=None):
    """``num`` direct samples within [0.95T, 1.05T] plus the expected-width subnet.
    A draw that finds none in ``max_draws`` keeps the closest one and is listed in
    'missed' (the search is not lost; the caller warns).  Returns {'subnets': {name:
    (fix_subnet dict, flops)}, 'histogram': [MFLOPs of direct draws], 'expected_channels':
    {unit: E[c]}, 'missed': [names outside the window], 'target_mflops': T}."""
    mut = model.mutator
    shape = model.input_shape
    demo = (1,) + tuple(shape)
    target = float(model.target_mflops if target_mflops is None else target_mflops) * 1e6
    lo, hi = 0.95 * target, 1.05 * target
    subnets, hist, missed = {}, [], []
    for i in range(num):
        best = None
        for _ in range(max_draws):
            mut.set_widths("direct", rng)
            f = mut.current_flops(shape)
            hist.append(f / 1e6)
            if best is None or abs(f - target) < abs(best[1] - target):
                best = (mut.export_subnet(demo), f)
            if lo <= f <= hi:       # inside the window is closer than anything outside it
                break
        else:
            missed.append(f"subnet_{i + 1}")
        subnets[f"subnet_{i + 1}"] = best
    while len(hist) < histogram_draws:
        mut.set_widths("direct", rng)
        hist.append(mut.current_flops(shape) / 1e6)
    expected = mut.expected_channels()
    mut.set_widths("expected")
    subnets["expected_ch"] = (mut.export_subnet(demo), mut.current_flops(shape))
    mut.set_widths("max")
    return {"subnets": subnets, "histogram": hist, "expected_channels": expected,
            "missed": missed, "target_mflops": target / 1e6,
            "expected_in_window": bool(lo <= subnets["expected_ch"][1] <= hi)}


def expected_off_target_message(samples):
    """The WARNING for an expected_ch structure outside the +-5% window: E[F] did not
    stay at the target, so the budget loss lost to the task loss."""
    t = samples["target_mflops"]
    f = samples["subnets"]["expected_ch"][1] / 1e6
    return (f"DMCPSubnetHook: expected_ch has {f:.2f} MFLOPs, {f / t:.0%} of the target "
            f"{t:.2f} MFLOPs (outside +-5%): the budget loss did not hold the expected FLOPs "
            f"at the target. Raise model.flop_loss_weight (1.0 held a ResNet-56 search at 12% "
            f"that 0.1 let drift to 22%), or deploy a subnet_*.json from the window")


def missed_window_message(samples, max_draws):
    """The WARNING for subnets that missed the +-5% window, with what to change."""
    t = samples["target_mflops"]
    got = ", ".join(f"{n} {samples['subnets'][n][1] / 1e6:.2f}" for n in samples["missed"])
    return (f"DMCPSubnetHook: no direct sample within 5% of {t:.2f} MFLOPs in {max_draws} draws "
            f"for {len(samples['missed'])} subnet(s); kept the closest ({got} MFLOPs) and "
            f"expected_ch. Train the architecture longer (arch_train_freq, max_epochs), raise "
            f"flop_loss_weight, or sample again with tools/sample_subnets.py --target")
