"""FLOPs in one place (DMCP.md section 4): which layers count and at which
sizes (``trace``), the per-layer terms the C expected-FLOPs routines take
(``flops_terms``), conv + linear multiply-accumulates and parameters at the
model's current widths (``count_flops``), and the input size every count is
taken at (``flops_input_shape``)."""
import numpy as np

from .config import UserError
from .nn import Conv2d, Linear


def trace(net, input_shape):
    """Forward one zero image of ``input_shape`` (C, H, W) through an ImageClassifier
    in eval mode with the gates off; every conv/linear records its active sizes.
    Returns [(name, layer)] of the convs and linears, in order."""
    saved = [(m, m.training) for _, m in net.named_modules()]
    gates = [(u, u.gate_on) for u in net.units.values()]
    for u, _ in gates:
        u.gate_on = False
    net.eval()
    try:
        x = np.zeros((1,) + tuple(input_shape), np.float32)
        layers = [(n, m) for n, m in net.named_modules() if isinstance(m, (Conv2d, Linear))]
        net.forward(x)
    finally:
        for m, t in saved:
            m.training = t
        for u, g in gates:
            u.gate_on = g
    return layers


def flops_terms(net, input_shape, units=None):
    """Rows [unit_a, unit_b, const_a, const_b, coef], one per conv/linear: its MACs are
    coef * (width of unit_a, or const_a) * (width of unit_b, or const_b), unit
    indices into ``units`` (default: the net's units).  Cached per size and units."""
    units = list(net.units.values()) if units is None else list(units)
    cache = net.__dict__.setdefault("_terms", {})
    key = (tuple(input_shape), tuple(id(u) for u in units))
    if key not in cache:
        index = {id(u): i for i, u in enumerate(units)}
        rows = []
        for _, m in trace(net, input_shape):
            ia = index.get(id(m.in_unit), -1)
            if isinstance(m, Linear):
                rows.append([ia, -1, m.in_features, m.out_features, 1.0])
                continue
            oh, ow = m._out_hw
            kk = m.kernel_size[0] * m.kernel_size[1] * oh * ow
            if m.depthwise:
                rows.append([ia, -1, m.in_channels, 1.0, kk])
            else:
                ib = index.get(id(m.out_unit), -1)
                rows.append([ia, ib, m.in_channels, m.out_channels, kk / m.groups])
        cache[key] = np.array(rows, np.float64).reshape(-1, 5)
    return cache[key]


def _model_of(model):
    return getattr(model, "architecture", model)


def count_flops(model, input_shape=(3, 224, 224)):
    """{'flops': MACs (int), 'params': int, 'layers': [rows]} at the current widths.

    Each row: name, type, in/out channels (active), kernel, output size, flops, params."""
    net = _model_of(model)
    layers = trace(net, input_shape)
    rows, total, params = [], 0, 0
    for name, m in layers:
        if isinstance(m, Linear):
            cin = m._inp.shape[1]
            cout = m.out_active or m.out_features
            f = cin * cout
            p = cin * cout + (cout if m.bias is not None else 0)
            rows.append(dict(name=name, type="Linear", in_channels=cin, out_channels=cout,
                             kernel=None, out_size=None, flops=f, params=p))
        else:
            cin = m._inp.shape[1]
            cout = cin if m.depthwise else (m.out_active or m.out_channels)
            groups = cin if m.depthwise else m.groups
            kh, kw = m.kernel_size
            oh, ow = m._out_hw
            f = cout * (cin // groups) * kh * kw * oh * ow
            p = cout * (cin // groups) * kh * kw + (cout if m.bias is not None else 0)
            rows.append(dict(name=name, type="Conv2d", in_channels=cin, out_channels=cout,
                             kernel=[kh, kw], out_size=[int(oh), int(ow)], flops=f, params=p))
        total += f
        params += p
    # BN parameters at the width they run
    for name, m in net.named_modules():
        if hasattr(m, "running_mean") and m._cache is not None:
            params += 2 * m._cache[0].shape[1]
    return dict(flops=int(total), params=int(params), layers=rows)


def flops_input_shape(cfg, shape=None):
    """(C, H, W) at which a config's FLOPs and target_flops are counted, decided here
    and only here (INTERFACES.md): ``demo_input`` of the mutator's parse_cfg when
    given, else what the val (or train) pipeline produces; ``shape`` = (H,) or (H, W)
    overrides the size.  A demo_input that disagrees with the pipeline is an error."""
    from .data import dataset_input_shape
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    demo = ((model.get("mutator_cfg") or {}).get("parse_cfg") or {}).get("demo_input")
    ds, where = None, None
    for key in ("val_dataloader", "train_dataloader"):
        dl = cfg.get(key)
        if isinstance(dl, dict) and isinstance(dl.get("dataset"), dict):
            ds, where = dl["dataset"], f"{key}.dataset"
            break
    piped = None
    if ds is not None:
        try:
            piped = dataset_input_shape(ds, where)
        except UserError:
            if demo is None:        # nothing else tells the size
                raise
    if demo is not None:
        if (not isinstance(demo, (list, tuple)) or len(demo) != 4
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in demo)):
            raise UserError(f"model.mutator_cfg.parse_cfg.demo_input: expected (1, C, H, W) "
                            f"positive ints, got {demo!r}")
        got = tuple(int(v) for v in demo[1:])
        if piped is not None and piped != got:
            raise UserError(f"model.mutator_cfg.parse_cfg.demo_input {tuple(demo)} disagrees with "
                            f"the {piped[1]}x{piped[2]}x{piped[0]} (HxWxC) images {where}'s "
                            f"pipeline produces; FLOPs and target_flops would be counted at "
                            f"another size than the net sees")
    elif piped is not None:
        got = piped
    else:
        raise UserError("cannot tell the input size FLOPs are counted at: give "
                        "model.mutator_cfg.parse_cfg.demo_input or a val_dataloader")
    if shape:
        if len(shape) > 2 or any(int(v) < 1 for v in shape):
            raise UserError(f"--shape {' '.join(map(str, shape))}: expected H or H W, positive "
                            f"integers")
        h = int(shape[0])
        w = int(shape[1]) if len(shape) > 1 else h
        got = (got[0], h, w)
    return got

