"""Deploying a pruned network (tools/export.py): the supernet or a retrained
subnet cut to the pruned structure's channels and written as a model that holds
only those channels.

- ``.onnx``: an inference graph (BN folded into the convolutions) written with
  the ``onnx`` package (``pip install dmcp[export]``), dynamic batch, input
  ``input`` (N, C, H, W), output ``logits``, the fix-subnet JSON in its metadata;
- ``.pth``: a zip-format PyTorch state dict with mmcls key names, written
  without PyTorch, with the structure beside it (``.json``);
- ``.npz``: a slim dmcp checkpoint that the subnet config and tools/test.py load.

Widths can be re-rounded to a multiple of a divisor (mmrazor's make-divisible
rule), which inference engines run faster.
"""
import argparse
import io
import json
import os
import struct
import zipfile

import numpy as np

from .algorithm import Structure, build_classifier, supernet_of
from .checkpoint import read_checkpoint
from .config import load_config
from .flops import count_flops, flops_input_shape
from .models import ConvModule, InvertedResidual, LinearClsHead, NormGateAct, _Backbone, \
    _ResidualBlock
from .nn import Conv2d, GlobalAvgPool, MaxPool2d, ReLU
from .config import UserError

FORMATS = ("onnx", "pth", "npz")
DEFAULT_OPSET = 17
MIN_OPSET = 11          # Clip with min/max inputs (ReLU6)


# ---------------------------------------------------------------- the pruned structure

def load_slim(structure, arch_cfg, state, source):
    """The pruned ImageClassifier holding ``state``'s weights: a full-width (supernet or
    pretrained) state is cut to the structure's first channels; a slim one must have
    exactly the structure's widths."""
    state = {k: v for k, v in state.items() if not k.startswith("mutator.")}
    model = build_classifier(arch_cfg, widths=structure.widths)
    try:
        structure.supernet.load_state_dict(state)
        full = True
    except UserError:
        full = False
    if full:
        model.load_state_dict(state, slice_channels=True)
    else:
        try:
            model.load_state_dict(state)
        except UserError as e:
            raise UserError(f"{source} fits neither the supernet's full widths nor the pruned "
                            f"structure: {str(e).split(': ', 1)[-1]} (a checkpoint of another "
                            f"architecture or width, or a structure it was not trained with)") \
                from None
    model.eval()
    return model, full


def _contiguous(a):
    """C-contiguous, keeping 0-d arrays 0-d (np.ascontiguousarray makes them 1-d)."""
    a = np.asarray(a)
    return a if a.flags.c_contiguous else a.copy()


# ---------------------------------------------------------------- ONNX

class _Graph:
    """Nodes and initialisers of an ONNX graph under construction."""

    def __init__(self, onnx, fold_bn=True):
        self.onnx, self.helper, self.fold_bn = onnx, onnx.helper, fold_bn
        self.nodes, self.inits, self.count = [], [], 0

    def const(self, hint, array):
        name = f"{hint}_{len(self.inits)}"
        self.inits.append(self.onnx.numpy_helper.from_array(_contiguous(array), name))
        return name

    def node(self, op, inputs, **attrs):
        self.count += 1
        out = f"{op.lower()}_{self.count}"
        self.nodes.append(self.helper.make_node(op, inputs, [out], name=f"{op}_{self.count}", **attrs))
        return out

    def act(self, x, cap):
        """None: identity; 0.0: ReLU; 6.0: ReLU6 (Clip)."""
        if cap is None:
            return x
        if cap == 0.0:
            return self.node("Relu", [x])
        return self.node("Clip", [x, self.const("clip_min", np.float32(0.0)),
                                  self.const("clip_max", np.float32(cap))])

    def conv_bn(self, conv, bn, cap, x):
        """A conv with the eval-mode BN after it folded in (or, with ``fold_bn`` off,
        a BatchNormalization node after it), then the activation."""
        if not self.fold_bn:
            y = self.conv(conv, x, conv.weight.data, None if conv.bias is None else conv.bias.data)
            y = self.node("BatchNormalization", [y] + [self.const(n, v) for n, v in (
                ("bn_scale", bn.weight.data), ("bn_bias", bn.bias.data),
                ("bn_mean", bn.running_mean), ("bn_var", bn.running_var))], epsilon=bn.eps)
            return self.act(y, cap)
        w = conv.weight.data.astype(np.float64)
        scale = bn.weight.data / np.sqrt(bn.running_var.astype(np.float64) + bn.eps)
        bias = bn.bias.data - bn.running_mean * scale
        if conv.bias is not None:
            bias = bias + conv.bias.data * scale
        y = self.conv(conv, x, (w * scale[:, None, None, None]).astype(np.float32),
                      bias.astype(np.float32))
        return self.act(y, cap)

    def conv(self, conv, x, weight, bias):
        groups = conv.in_channels if conv.depthwise else conv.groups
        (ph, pw), (sh, sw), (dh, dw) = conv.padding, conv.stride, conv.dilation
        inputs = [x, self.const("weight", weight)]
        if bias is not None:
            inputs.append(self.const("bias", bias))
        return self.node("Conv", inputs, kernel_shape=list(conv.kernel_size), strides=[sh, sw],
                         pads=[ph, pw, ph, pw], dilations=[dh, dw], group=groups)


def _emit_ops(g, ops, x):
    i = 0
    while i < len(ops):
        op = ops[i]
        if isinstance(op, Conv2d):
            nga = ops[i + 1] if i + 1 < len(ops) else None
            if not isinstance(nga, NormGateAct):
                raise UserError("export: a Conv2d without its BN has no folded ONNX form")
            x = g.conv_bn(op, nga._bn, nga._act, x)
            i += 2
            continue
        x = _emit(g, op, x)
        i += 1
    return x


def _emit(g, op, x):
    if isinstance(op, _ResidualBlock):
        main = _emit_ops(g, op._main, x)
        identity = _emit_ops(g, op._down, x) if op._down else x
        return g.node("Relu", [g.node("Add", [main, identity])])
    if isinstance(op, InvertedResidual):
        out = _emit_ops(g, op.conv, x)
        return g.node("Add", [out, x]) if op.use_res else out
    if isinstance(op, ConvModule):
        return _emit_ops(g, op._ops, x)
    if isinstance(op, _Backbone):
        return _emit_ops(g, op._ops, x)
    if isinstance(op, MaxPool2d):
        p = op.padding
        return g.node("MaxPool", [x], kernel_shape=[op.kernel_size] * 2, strides=[op.stride] * 2,
                      pads=[p, p, p, p])
    if isinstance(op, ReLU):
        return g.act(x, op.cap if op.cap > 0 else 0.0)
    if isinstance(op, GlobalAvgPool):
        return g.node("Flatten", [g.node("GlobalAveragePool", [x])], axis=1)
    if isinstance(op, LinearClsHead):
        fc = op.fc
        inputs = [x, g.const("fc_weight", fc.weight.data)]
        if fc.bias is not None:
            inputs.append(g.const("fc_bias", fc.bias.data))
        return g.node("Gemm", inputs, transB=1)
    raise UserError(f"export: layer {type(op).__name__} has no ONNX form")


def import_onnx():
    try:
        import onnx
    except ImportError:
        raise UserError("ONNX export needs the 'onnx' package: pip install 'dmcp[export]' "
                        "(or pip install onnx)") from None
    return onnx


def onnx_metadata(cfg, fix_subnet, input_shape, flops):
    """The metadata every pruned ONNX model dmcp writes carries (tools/export.py and
    tools/pipeline.py): its structure (the fix-subnet dict, as JSON), the input
    (C, H, W), its conv+linear MACs ``flops`` as MFLOPs, the config's
    data_preprocessor (the mean/std its inputs need) when it has one, and the producer."""
    meta = {"fix_subnet": json.dumps(fix_subnet), "input_shape": json.dumps(list(input_shape)),
            "mflops": f"{flops / 1e6:.3f}", "producer": "dmcp"}
    pre = cfg.get("data_preprocessor") or (cfg.get("model") or {}).get("data_preprocessor")
    if isinstance(pre, dict):
        meta["data_preprocessor"] = json.dumps(_jsonable(pre))
    return meta


def to_onnx(model, input_shape, opset=DEFAULT_OPSET, metadata=None, fold_bn=True):
    """An onnx.ModelProto of an eval-mode ImageClassifier for (N, *input_shape) inputs;
    ``fold_bn=False`` keeps BN as BatchNormalization nodes (what an eval-mode
    PyTorch model runs)."""
    onnx = import_onnx()
    g = _Graph(onnx, fold_bn)
    out = _emit_ops(g, model._ops, "input")
    g.nodes[-1].output[0] = "logits"
    h = onnx.helper
    c, hh, ww = input_shape
    graph = h.make_graph(
        g.nodes, "dmcp_pruned",
        [h.make_tensor_value_info("input", onnx.TensorProto.FLOAT, ["N", c, hh, ww])],
        [h.make_tensor_value_info("logits", onnx.TensorProto.FLOAT,
                                  ["N", model.head.num_classes])],
        g.inits)
    del out
    opsets = [h.make_opsetid("", opset)]
    m = h.make_model(graph, opset_imports=opsets, producer_name="dmcp",
                     ir_version=h.find_min_ir_version_for(opsets))
    for k, v in (metadata or {}).items():
        m.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(m, full_check=True)
    return m


# ---------------------------------------------------------------- .pth without PyTorch

_PTH_STORAGE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage",
                np.dtype(np.float64): "DoubleStorage", np.dtype(np.int32): "IntStorage"}


class _Pickle:
    """Pickle protocol 2 opcodes for what ``torch.save`` writes of a state dict:
    an OrderedDict of ``torch._utils._rebuild_tensor_v2`` calls whose storages are
    persistent ids naming the archive's ``data/<key>`` records."""

    def __init__(self):
        self.b = bytearray(b"\x80\x02")         # PROTO 2

    def glob(self, module, name):
        self.b += b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    def text(self, s):
        raw = s.encode("utf-8")
        self.b += b"X" + struct.pack("<I", len(raw)) + raw

    def int(self, v):
        v = int(v)
        if -2 ** 31 <= v < 2 ** 31:
            self.b += b"J" + struct.pack("<i", v)
        else:
            raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            self.b += b"\x8a" + bytes([len(raw)]) + raw

    def ints(self, values):
        if not values:
            self.b += b")"                     # EMPTY_TUPLE
            return
        self.b += b"("                         # MARK
        for v in values:
            self.int(v)
        self.b += b"t"                         # TUPLE

    def ordered_dict(self):
        self.glob("collections", "OrderedDict")
        self.b += b")R"                        # EMPTY_TUPLE, REDUCE


def pth_bytes(state, root="archive"):
    """A state dict {name: array} as the bytes of a zip-format ``torch.save`` file."""
    p = _Pickle()
    p.ordered_dict()
    p.b += b"("                                # MARK for SETITEMS
    records = []
    for i, (name, arr) in enumerate(state.items()):
        arr = _contiguous(arr)
        if arr.dtype not in _PTH_STORAGE:
            raise UserError(f".pth export: '{name}' has dtype {arr.dtype}, which it does not write")
        p.text(name)
        p.glob("torch._utils", "_rebuild_tensor_v2")
        p.b += b"("                            # MARK: the call's arguments
        p.b += b"("                            # the storage's persistent id
        p.text("storage")
        p.glob("torch", _PTH_STORAGE[arr.dtype])
        p.text(str(i))
        p.text("cpu")
        p.int(arr.size)
        p.b += b"tQ"                           # TUPLE, BINPERSID
        p.int(0)
        p.ints(arr.shape)
        p.ints([st // arr.itemsize for st in arr.strides] if arr.ndim else [])
        p.b += b"\x89"                         # requires_grad = False
        p.ordered_dict()                       # backward hooks
        p.b += b"tR"                           # TUPLE, REDUCE
        records.append((str(i), arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()))
    p.b += b"u."                               # SETITEMS, STOP
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{root}/data.pkl", bytes(p.b))
        z.writestr(f"{root}/byteorder", "little")
        for key, raw in records:
            z.writestr(f"{root}/data/{key}", raw)
        z.writestr(f"{root}/version", "3\n")
    return out.getvalue()


# ---------------------------------------------------------------- writing

def write_atomic(path, data):
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def npz_bytes(state, fix_subnet):
    arrays = {f"state_dict/{k}": _contiguous(v) for k, v in state.items()}
    arrays["fix_subnet"] = np.frombuffer(json.dumps(fix_subnet).encode(), np.uint8)
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def _format_of(out, fmt):
    if fmt is None:
        fmt = os.path.splitext(out)[1].lstrip(".").lower()
        if fmt not in FORMATS:
            raise UserError(f"--out {out}: cannot tell the format from the suffix; name it "
                            f".onnx, .pth or .npz, or give --format")
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: not one of {', '.join(FORMATS)}")
    return fmt


def export_main(argv):
    p = argparse.ArgumentParser(prog="export.py", description="Write a pruned network that "
                                "holds only its channels: ONNX (BN folded), a slim PyTorch "
                                "state dict, or a slim dmcp checkpoint.")
    p.add_argument("config", help="a supernet (DMCP), sub_model or classifier config")
    p.add_argument("checkpoint", help="dmcp .npz (supernet or retrained subnet) or PyTorch .pth")
    p.add_argument("--subnet", help="fix-subnet JSON (default: the config's model.fix_subnet, "
                   "of a sub_model or DMCP dict)")
    p.add_argument("--out", required=True, help="output file (.onnx, .pth or .npz)")
    p.add_argument("--format", choices=None, help="onnx, pth or npz (default: from --out)")
    p.add_argument("--shape", type=int, nargs="+", help="input H [W] (default: the config's)")
    p.add_argument("--divisor", type=int, help="round every width to a multiple of N")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--cfg-options", nargs="+", default=[])
    args = p.parse_args(argv)
    fmt = _format_of(args.out, args.format)
    if args.divisor is not None and args.divisor < 1:
        raise UserError(f"--divisor {args.divisor}: must be a positive integer")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        raise UserError(f"--out {args.out}: folder '{folder}' does not exist")
    if fmt == "onnx":
        onnx = import_onnx()
        newest = onnx.defs.onnx_opset_version()
        if not MIN_OPSET <= args.opset <= newest:
            raise UserError(f"--opset {args.opset}: must be {MIN_OPSET}..{newest}")
    cfg = load_config(args.config, args.cfg_options)
    shape = flops_input_shape(cfg, args.shape)
    arch_cfg, own_subnet, rounding = supernet_of(cfg)
    fix = args.subnet if args.subnet is not None else own_subnet
    st = Structure(arch_cfg, fix, shape, rounding, args.divisor)
    try:
        model, _ = load_slim(st, arch_cfg, read_checkpoint(args.checkpoint), args.checkpoint)
    except UserError:
        if not st.rerounded:
            raise
        name, (a, b) = next(iter(st.rerounded.items()))
        raise UserError(f"--divisor {args.divisor} changes {len(st.rerounded)} width(s) of a "
                        f"retrained subnet ({name}: {a} -> {b}), which {args.checkpoint} has no "
                        f"weights for; export from the supernet checkpoint, or round before "
                        f"retraining (model.mutator_cfg.channel_unit_cfg.default_args.divisor)") \
            from None
    fix_subnet = st.fix_subnet()
    flops = count_flops(model, shape)
    if fmt == "onnx":
        meta = onnx_metadata(cfg, fix_subnet, shape, flops["flops"])
        data = to_onnx(model, shape, args.opset, meta).SerializeToString()
    elif fmt == "pth":
        data = pth_bytes(model.state_dict())
    else:
        data = npz_bytes(model.state_dict(), fix_subnet)
    if fmt in ("pth", "npz"):
        write_atomic(os.path.splitext(args.out)[0] + ".json",
                     json.dumps(fix_subnet, indent=2).encode())
    write_atomic(args.out, data)
    if args.divisor is not None:
        print(f"divisor {args.divisor}: {st.mflops_given:.2f} -> {st.mflops:.2f} MFLOPs")
    print(f"wrote {args.out} ({fmt}, {len(data) / 1e6:.2f} MB): {flops['flops'] / 1e6:.2f} MFLOPs "
          f"({100 * flops['flops'] / 1e6 / st.full_mflops:.1f}% of the supernet's "
          f"{st.full_mflops:.2f}), {flops['params'] / 1e6:.3f} M params, input "
          f"{'x'.join(map(str, shape))}")
    return 0


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))
