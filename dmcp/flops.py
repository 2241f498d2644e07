"""FLOPs and parameter counting: conv + linear multiply-accumulates at the
model's current widths, one image of the given size (DMCP.md section 4)."""
from .nn import Linear


def _model_of(model):
    return getattr(model, "architecture", model)


def count_flops(model, input_shape=(3, 224, 224)):
    """{'flops': MACs (int), 'params': int, 'layers': [rows]} at the current widths.

    Each row: name, type, in/out channels (active), kernel, output size, flops, params."""
    net = _model_of(model)
    layers = net.trace(input_shape)
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
