"""Every binding of dmcp._C, forward and backward, against PyTorch (float64
reference computed from the same float32 data), the optimised kernels against
their _naive siblings, central finite differences of dmcp's own forwards, and
thread-count independence.  Shapes are tiny and awkward on purpose."""
import copy
import hashlib
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dmcp import _C as C

torch.set_num_threads(1)
f32, f64 = np.float32, torch.float64
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def T(a, grad=False):
    """float64 torch tensor of a numpy array (None stays None)."""
    if a is None:
        return None
    return torch.tensor(np.asarray(a, np.float64), dtype=f64, requires_grad=grad)


def npy(t):
    return t.detach().numpy()


def randn(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(f32)


# ---------------------------------------------------------------- conv2d

def conv_case(n, c, h, w, oc, k, stride=1, pad=0, dil=1, groups=1):
    pair = lambda v: (v, v) if np.isscalar(v) else tuple(v)
    return dict(n=n, c=c, h=h, w=w, oc=oc, k=pair(k), stride=pair(stride), pad=pair(pad),
                dil=pair(dil), groups=groups)


CONV_CASES = {
    "3x3": conv_case(2, 3, 8, 8, 4, 3, 1, 1),
    "3x3_s2_odd": conv_case(2, 4, 9, 7, 6, 3, 2, 1),
    "3x3_p0_b1": conv_case(1, 3, 5, 6, 2, 3, 1, 0),
    "3x3_p3_tiny": conv_case(2, 2, 3, 3, 3, 3, 1, 3),
    "1x1_b1": conv_case(1, 5, 7, 9, 3, 1),
    "1x1_s2": conv_case(2, 4, 8, 7, 8, 1, 2, 0),
    "1x1_p1": conv_case(1, 3, 4, 5, 2, 1, 1, 1),
    "7x7_s2_p3": conv_case(2, 3, 11, 10, 4, 7, 2, 3),
    "3x3_dil2": conv_case(1, 3, 9, 9, 4, 3, 1, 2, 2),
    "1x3_mixed": conv_case(2, 3, 7, 10, 5, (1, 3), (2, 1), (0, 1), (1, 2)),
    "dw3x3": conv_case(2, 6, 9, 8, 6, 3, 1, 1, 1, 6),
    "dw3x3_s2": conv_case(2, 6, 9, 8, 6, 3, 2, 1, 1, 6),
    # the flat 'same' path for narrow planes: 7x7 (49 floats, not a vector
    # multiple), one column, one row, the widest it takes, and one wider (grid)
    "dw3x3_flat7": conv_case(3, 10, 7, 7, 10, 3, 1, 1, 1, 10),
    "dw3x3_flat_w1": conv_case(2, 3, 5, 1, 3, 3, 1, 1, 1, 3),
    "dw3x3_flat_h1": conv_case(2, 3, 1, 6, 3, 3, 1, 1, 1, 3),
    "dw3x3_flat_w64": conv_case(1, 4, 6, 64, 4, 3, 1, 1, 1, 4),
    "dw3x3_grid_w65": conv_case(1, 4, 5, 65, 4, 3, 1, 1, 1, 4),
    "dw3x3_p0_narrow": conv_case(2, 3, 3, 4, 3, 3, 1, 0, 1, 3),
    "dw3x3_s2_w2": conv_case(1, 2, 5, 2, 2, 3, 2, 1, 1, 2),
    "dw3x3_s2_p01_w2": conv_case(1, 2, 3, 2, 2, 3, 2, (0, 1), 1, 2),
    "dw3x3_dil2": conv_case(2, 8, 9, 9, 8, 3, 1, 2, 2, 8),
    "dw5x5_b1": conv_case(1, 4, 7, 7, 4, 5, 1, 2, 1, 4),
    "dw7x7_s2_p3": conv_case(1, 3, 9, 8, 3, 7, 2, 3, 1, 3),
    "g2_3x3": conv_case(2, 4, 8, 8, 6, 3, 1, 1, 1, 2),
    "g4_3x3_s2": conv_case(2, 8, 7, 7, 8, 3, 2, 1, 1, 4),
    "g2_1x1": conv_case(2, 4, 6, 6, 8, 1, 1, 0, 1, 2),
    "g4_3x3_dil2_b1": conv_case(1, 8, 8, 9, 12, 3, 1, 2, 2, 4),
    # past conv2d.c's chunking thresholds: a pointwise conv with >= 1024 output
    # pixels runs per image on the image itself; a column matrix of > 1M floats
    # per image gives chunks of 2 images, so a batch of 3 leaves a remainder
    "1x1_direct": conv_case(3, 4, 32, 33, 5, 1),
    "g2_3x3_chunked": conv_case(3, 16, 80, 80, 4, 3, 1, 1, 1, 2),
    # an output plane under 1024 pixels takes chunks of up to 2M floats: 2 + 1
    # images here (backward-data of a strided conv goes through the GEMMs)
    "3x3_s2_small_plane_chunked": conv_case(3, 96, 60, 60, 16, 3, 2, 1),
    # Winograd F(2x2, 3x3): 3x3 stride 1 with >= 16 channels each way and
    # enough 2x2 tiles (forward >= 128, backward-data >= 384); odd sizes,
    # paddings 0..2, and a batch split into image chunks (5 + 2 of 80x80)
    "wino_odd": conv_case(2, 16, 33, 31, 17, 3, 1, 1),
    "wino_p0_b1": conv_case(1, 16, 42, 41, 16, 3, 1, 0),
    "wino_p2": conv_case(2, 17, 29, 30, 16, 3, 1, 2),
    "wino_p02": conv_case(1, 16, 40, 43, 16, 3, 1, (0, 2)),
    "wino_chunked": conv_case(7, 16, 80, 80, 16, 3, 1, 1),
    # Winograd F(4x4, 3x3) forward and backward-data (>= 64 channels each way,
    # >= 192 4x4 tiles): odd sizes, paddings 0..2, tile rows cut by blocks;
    # 64 channels on 28x28 at batch 2 (98 4x4 tiles) stays F(2x2)
    "wino4_odd": conv_case(3, 64, 30, 29, 65, 3, 1, 1),
    "wino4_p0_b1": conv_case(1, 64, 62, 58, 64, 3, 1, 0),
    "wino4_p2": conv_case(2, 70, 41, 37, 64, 3, 1, 2),
    "wino4_p12": conv_case(1, 64, 57, 50, 66, 3, 1, (1, 2)),
    "wino2_64": conv_case(2, 64, 28, 28, 64, 3, 1, 1),
    # F(4x4) backward-weight (128+ channels each way, 192+ tiles): odd sizes,
    # padding 0, and 486 tiles, more than one chunk of V and dM
    "wino4_dw_odd": conv_case(3, 128, 30, 29, 130, 3, 1, 1),
    "wino4_dw_p0": conv_case(5, 128, 26, 27, 128, 3, 1, 0),
    "wino4_dw_chunks": conv_case(6, 128, 34, 34, 128, 3, 1, 1),
    # Winograd backward-weight too (>= 64 channels each way): odd sizes, blocks over slots
    "wino_dw_odd": conv_case(3, 64, 9, 11, 65, 3, 1, 1),
    "wino_dw_p2_many": conv_case(9, 64, 20, 19, 64, 3, 1, 2),
}


def conv_out_hw(cs):
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = cs["k"], cs["stride"], cs["pad"], cs["dil"]
    oh = (cs["h"] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (cs["w"] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    return oh, ow


def conv_args(cs):
    return (*cs["stride"], *cs["pad"], *cs["dil"], cs["groups"])


def conv_data(rng, cs, bias):
    n, c, oc, g = cs["n"], cs["c"], cs["oc"], cs["groups"]
    kh, kw = cs["k"]
    x = randn(rng, n, c, cs["h"], cs["w"])
    wt = randn(rng, oc, c // g, kh, kw, scale=1.0 / np.sqrt(c // g * kh * kw))
    b = randn(rng, oc) if bias else None
    dout = randn(rng, n, oc, *conv_out_hw(cs))
    return x, wt, b, dout


def dmcp_conv(cs, x, wt, b, dout, naive=False):
    fwd = C.conv2d_forward_naive if naive else C.conv2d_forward
    bwd = C.conv2d_backward_naive if naive else C.conv2d_backward
    out = np.full((x.shape[0], cs["oc"], *conv_out_hw(cs)), np.nan, f32)
    fwd(out, x, wt, b, *conv_args(cs))
    dw = np.zeros_like(wt)
    db = None if b is None else np.zeros_like(b)
    if naive:
        dx = np.zeros_like(x)
        bwd(dx, dw, db, dout, x, wt, *conv_args(cs))
    else:   # as the layers call it: dinp written over (NaN here), never read
        dx = np.full_like(x, np.nan)
        bwd(dx, dw, db, dout, x, wt, *conv_args(cs), False)
    return out, dx, dw, db


_NAIVE = {}


def naive_once(tag, inputs, run):
    """run() -- a naive kernel on these inputs -- once for all ISA variants: the
    naive kernels are always the base build (csrc/isa.c), every variant's
    reference, and under the sanitizers a 128-channel case costs seconds a run.  Each variant's test gets its own
    copy; the last variant to ask frees the entry."""
    h = hashlib.blake2b(tag.encode(), digest_size=16)
    for a in inputs:
        h.update(b"-" if a is None else np.ascontiguousarray(a).tobytes())
    key = h.digest()
    if key not in _NAIVE:
        _NAIVE[key] = [run(), 0]
    entry = _NAIVE[key]
    entry[1] += 1
    if entry[1] == len(C.isa_available()):
        del _NAIVE[key]
    return copy.deepcopy(entry[0])


def torch_conv(cs, x, wt, b, dout):
    xt, wtt, bt = T(x, True), T(wt, True), T(b, b is not None)
    y = F.conv2d(xt, wtt, bt, cs["stride"], cs["pad"], cs["dil"], cs["groups"])
    y.backward(T(dout))
    return npy(y), npy(xt.grad), npy(wtt.grad), None if b is None else npy(bt.grad)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("name", list(CONV_CASES))
def test_conv2d_vs_torch(name, bias, rng, close, isa):
    cs = CONV_CASES[name]
    x, wt, b, dout = conv_data(rng, cs, bias)
    got = dmcp_conv(cs, x, wt, b, dout)
    want = torch_conv(cs, x, wt, b, dout)
    for label, g, r in zip(("out", "dinp", "dweight", "dbias"), got, want):
        if r is not None:
            close(g, r, f"conv2d {label}")


# every case but the one whose naive reference costs 7 s per ISA (PyTorch checks it)
NAIVE_CASES = [name for name in CONV_CASES if name != "wino4_dw_chunks"]


@pytest.mark.parametrize("name", NAIVE_CASES)
def test_conv2d_matches_naive(name, rng, close, isa):
    cs = CONV_CASES[name]
    x, wt, b, dout = conv_data(rng, cs, True)
    fast = dmcp_conv(cs, x, wt, b, dout)
    naive = naive_once(f"conv2d {name}", (x, wt, b, dout),
                       lambda: dmcp_conv(cs, x, wt, b, dout, naive=True))
    # F(4x4)'s transforms scale by up to 8 and 1/24: with 128 channels its
    # rounding reaches 1e-5 of the largest value (F(2x2) and the rest: 1e-6)
    rtol = 3e-5 if name.startswith("wino4") else 1e-5
    for label, g, r in zip(("out", "dinp", "dweight", "dbias"), fast, naive):
        close(g, r, f"conv2d vs naive {label}", rtol=rtol, atol=1e-6)


# the output epilogue: (scale, shift, act) of conv2d_forward
EPILOGUES = {"bias_relu": (False, True, 0.0), "bn": (True, True, None),
             "bn_relu6": (True, True, 6.0), "scale_relu": (True, False, 0.0)}


def epilogue_data(rng, oc, kind):
    scaled, shifted, act = EPILOGUES[kind]
    scale = (rng.uniform(0.2, 2.0, oc) * rng.choice([-1.0, 1.0], oc)).astype(f32) if scaled else None
    shift = randn(rng, oc) if shifted else None
    return scale, shift, act


@pytest.mark.parametrize("kind", list(EPILOGUES))
@pytest.mark.parametrize("name", list(CONV_CASES))
def test_conv2d_epilogue_vs_torch(name, kind, rng, close, isa):
    """Every path (depthwise, Winograd, tiled, the GEMMs in place, per image and
    in chunks) applies act(conv * scale + shift) as it writes; so does _naive."""
    cs = CONV_CASES[name]
    x, wt, _, _ = conv_data(rng, cs, False)
    scale, shift, act = epilogue_data(rng, cs["oc"], kind)
    y = F.conv2d(T(x), T(wt), None, cs["stride"], cs["pad"], cs["dil"], cs["groups"])
    if scale is not None:
        y = y * T(scale)[:, None, None]
    if shift is not None:
        y = y + T(shift)[:, None, None]
    if act is not None:
        y = y.clamp(0.0, act if act > 0 else None)
    def forward(fwd):
        out = np.full((cs["n"], cs["oc"], *conv_out_hw(cs)), np.nan, f32)
        fwd(out, x, wt, shift, *conv_args(cs), scale=scale, act=act)
        return out

    close(forward(C.conv2d_forward), npy(y), "conv2d epilogue")
    naive = naive_once(f"conv2d epilogue {name} {kind}", (x, wt, scale, shift),
                       lambda: forward(C.conv2d_forward_naive))
    close(naive, npy(y), "conv2d epilogue (naive)")


@pytest.mark.parametrize("act", [None, 0.0, 6.0], ids=["noact", "relu", "relu6"])
@pytest.mark.parametrize("name", ["3x3", "1x1_direct", "1x1_b1", "dw3x3_s2", "dw3x3_flat7", "wino_odd",
                                  "wino4_odd", "g2_3x3_chunked"])
def test_conv2d_folded_bn_equals_conv_then_bn(name, act, rng, close, isa):
    """A conv with an eval-mode BN folded into its epilogue (scale, shift as
    dmcp.models computes them) gives what the conv and then BN's eval pass give."""
    cs = CONV_CASES[name]
    x, wt, _, _ = conv_data(rng, cs, False)
    oc = cs["oc"]
    gamma, beta, mean = randn(rng, oc), randn(rng, oc), randn(rng, oc)
    var, eps = rng.uniform(0.5, 2.0, oc).astype(f32), 1e-5
    conv = np.empty((cs["n"], oc, *conv_out_hw(cs)), f32)
    C.conv2d_forward(conv, x, wt, None, *conv_args(cs))
    want = np.empty_like(conv)
    C.batchnorm_forward_eval(want, conv, gamma, beta, mean, var, eps, act=act)
    scale = gamma * (f32(1.0) / np.sqrt(var + f32(eps)))
    shift = beta - mean * scale
    got = np.full_like(conv, np.nan)
    C.conv2d_forward(got, x, wt, shift, *conv_args(cs), scale=scale, act=act)
    close(got, want, "conv2d folded BN vs conv + BN", rtol=1e-6, atol=1e-7)


def test_conv2d_epilogue_bad_input(rng):
    cs = CONV_CASES["3x3"]
    x, wt, b, _ = conv_data(rng, cs, True)
    out = np.empty((cs["n"], cs["oc"], *conv_out_hw(cs)), f32)
    with pytest.raises(ValueError, match="scale"):
        C.conv2d_forward(out, x, wt, b, *conv_args(cs), scale=np.ones(cs["oc"] - 1, f32))
    with pytest.raises(TypeError, match="scale"):
        C.conv2d_forward(out, x, wt, b, *conv_args(cs), scale=np.ones(cs["oc"], np.float64))
    with pytest.raises(ValueError, match="act"):
        C.conv2d_forward(out, x, wt, b, *conv_args(cs), act=-1.0)
    with pytest.raises(TypeError):
        C.conv2d_forward(out, x, wt, b, *conv_args(cs), np.ones(cs["oc"], f32))   # keyword only


@pytest.mark.parametrize("naive", [False, True], ids=["fast", "naive"])
@pytest.mark.parametrize("name", ["3x3_s2_odd", "1x1_b1", "dw3x3", "g2_3x3", "3x3", "1x1_direct",
                                  "3x3_s2_small_plane_chunked", "wino_odd", "wino4_odd"])
def test_conv2d_backward_accumulates(name, naive, rng, close, isa):
    cs = CONV_CASES[name]
    x, wt, b, dout = conv_data(rng, cs, True)
    bwd = C.conv2d_backward_naive if naive else C.conv2d_backward
    once = [np.zeros_like(x), np.zeros_like(wt), np.zeros_like(b)]
    bwd(*once, dout, x, wt, *conv_args(cs))
    twice = [np.zeros_like(x), np.zeros_like(wt), np.zeros_like(b)]
    bwd(*twice, dout, x, wt, *conv_args(cs))
    bwd(*twice, dout, x, wt, *conv_args(cs))
    for g1, g2 in zip(once, twice):
        close(g2, 2 * g1, "conv2d accumulate", rtol=1e-6, atol=0)
    # accumulation into non-zero gradients: start + grad
    start = [randn(rng, *g.shape) for g in once]
    acc = [s.copy() for s in start]
    bwd(*acc, dout, x, wt, *conv_args(cs))
    for a, s, g1 in zip(acc, start, once):
        close(a, s + g1, "conv2d accumulate", rtol=1e-6, atol=1e-6)
    # accumulate=False: dinp overwritten whatever it held (NaN included); weights still add
    over = [np.full_like(x, np.nan), start[1].copy(), start[2].copy()]
    bwd(*over, dout, x, wt, *conv_args(cs), False)
    close(over[0], once[0], "conv2d overwrite", rtol=1e-6, atol=0)
    close(over[1], start[1] + once[1], "conv2d overwrite", rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["3x3_s2_odd", "1x1_b1", "dw3x3", "g2_1x1"])
def test_conv2d_backward_optional_grads(name, rng, close):
    """Each of dinp/dweight/dbias may be None; the others are unchanged."""
    cs = CONV_CASES[name]
    x, wt, b, dout = conv_data(rng, cs, True)
    full = dmcp_conv(cs, x, wt, b, dout)[1:]
    for keep in range(3):
        grads = [None, None, None]
        grads[keep] = np.zeros_like((x, wt, b)[keep])
        C.conv2d_backward(*grads, dout, x, wt, *conv_args(cs))
        close(grads[keep], full[keep], "conv2d optional grads", rtol=1e-6, atol=1e-7)
    C.conv2d_backward(None, None, None, dout, x, wt, *conv_args(cs))   # nothing to do, no crash


SLICE_CASES = {   # geometry + (C_full, OC_full) of the weight buffer; groups == 1
    "3x3": (conv_case(2, 3, 7, 8, 4, 3, 1, 1), 5, 7),
    "1x1": (conv_case(2, 3, 5, 5, 2, 1), 6, 4),
    "3x3_s2": (conv_case(1, 2, 9, 7, 3, 3, 2, 1), 4, 5),
    "7x7_s2_p3": (conv_case(2, 3, 10, 9, 4, 7, 2, 3), 5, 6),
    "3x3_dil2": (conv_case(1, 4, 9, 9, 3, 3, 1, 2, 2), 8, 8),
    "1x1_direct": (conv_case(2, 3, 32, 32, 4, 1), 6, 5),
    "3x3_chunked": (conv_case(3, 14, 80, 80, 3, 3, 1, 1), 16, 5),
    "wino": (conv_case(2, 16, 31, 32, 18, 3, 1, 1), 20, 24),
    "wino_dw": (conv_case(2, 64, 7, 6, 66, 3, 1, 1), 70, 72),
    "wino4": (conv_case(4, 64, 28, 27, 65, 3, 1, 1), 67, 70),
}


@pytest.mark.parametrize("naive", [False, True], ids=["fast", "naive"])
@pytest.mark.parametrize("name", list(SLICE_CASES))
def test_conv2d_channel_sliced(name, naive, rng, close, isa):
    cs, cf, ocf = SLICE_CASES[name]
    c, oc = cs["c"], cs["oc"]
    kh, kw = cs["k"]
    x = randn(rng, cs["n"], c, cs["h"], cs["w"])
    wfull = randn(rng, ocf, cf, kh, kw, scale=0.3)
    bfull = randn(rng, ocf)
    dout = randn(rng, cs["n"], oc, *conv_out_hw(cs))
    if naive:
        out, dx, dwf, dbf = naive_once(f"conv2d sliced {name}", (x, wfull, bfull, dout),
                                       lambda: dmcp_conv(cs, x, wfull, bfull, dout, naive=True))
    else:
        out, dx, dwf, dbf = dmcp_conv(cs, x, wfull, bfull, dout)
    want = torch_conv(cs, x, wfull[:oc, :c], bfull[:oc], dout)
    close(out, want[0], "conv2d sliced out")
    close(dx, want[1], "conv2d sliced dinp")
    close(dwf[:oc, :c], want[2], "conv2d sliced dweight")
    close(dbf[:oc], want[3], "conv2d sliced dbias")
    rest = dwf.copy()
    rest[:oc, :c] = 0
    assert not rest.any(), "conv2d_backward wrote dweight outside [:oc, :c]"
    assert not dbf[oc:].any(), "conv2d_backward wrote dbias beyond oc"


@pytest.mark.parametrize("naive", [False, True], ids=["fast", "naive"])
@pytest.mark.parametrize("k,stride,pad", [(3, 1, 1), (3, 2, 1), (5, 1, 2)])
def test_conv2d_depthwise_sliced(k, stride, pad, naive, rng, close, isa):
    cf, c = 7, 4
    cs = conv_case(2, c, 8, 7, c, k, stride, pad, 1, c)
    x = randn(rng, 2, c, 8, 7)
    wfull = randn(rng, cf, 1, k, k, scale=0.3)
    bfull = randn(rng, cf)
    dout = randn(rng, 2, c, *conv_out_hw(cs))
    out, dx, dwf, dbf = dmcp_conv(cs, x, wfull, bfull, dout, naive=naive)
    want = torch_conv(cs, x, wfull[:c], bfull[:c], dout)
    for label, g, r in zip(("out", "dinp", "dweight", "dbias"), (out, dx, dwf[:c], dbf[:c]), want):
        close(g, r, f"conv2d depthwise sliced {label}")
    assert not dwf[c:].any() and not dbf[c:].any(), "depthwise backward wrote beyond c channels"


def test_conv2d_scratch_shared_across_threads(rng, close):
    """Python threads calling in parallel share one scratch buffer (mutex):
    results equal the sequential ones; scratch_free releases it."""
    names = ["3x3_s2_odd", "7x7_s2_p3", "g2_3x3", "3x3_dil2"]
    data = [(CONV_CASES[nm], *conv_data(rng, CONV_CASES[nm], True)) for nm in names]
    want = [dmcp_conv(*d) for d in data]
    assert C.scratch_floats() > 0
    results = {}

    def work(i):
        for rep in range(5):
            results[(i, rep)] = dmcp_conv(*data[i % len(data)])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for (i, rep), got in results.items():
        for g, r in zip(got, want[i % len(data)]):
            close(g, r, "conv2d threaded", rtol=1e-6, atol=1e-6)
    C.scratch_free()
    assert C.scratch_floats() == 0
    got = dmcp_conv(*data[0])
    close(got[0], want[0][0], "conv2d threaded", rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- batchnorm

BN_SHAPES = [(2, 3, 4, 5), (1, 4, 3, 3), (4, 2, 1, 1), (3, 5, 7, 1), (2, 1, 2, 2)]


def bn_data(rng, shape, cf):
    x = (rng.standard_normal(shape) * 2.0 + 0.5).astype(f32)
    gamma = rng.uniform(0.5, 1.5, cf).astype(f32)
    beta = randn(rng, cf)
    rm = randn(rng, cf)
    rv = rng.uniform(0.5, 2.0, cf).astype(f32)
    dout = randn(rng, *shape)
    return x, gamma, beta, rm, rv, dout


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
def test_batchnorm_train_vs_torch(shape, affine, rng, close, isa):
    c, cf, eps = shape[1], shape[1] + 2, 1e-5     # buffers longer than c: channel-sliced
    x, gamma, beta, rm, rv, dout = bn_data(rng, shape, cf)
    if not affine:
        gamma = beta = None
    rm0, rv0 = rm.copy(), rv.copy()
    out, sm, si = np.empty_like(x), np.empty(c, f32), np.empty(c, f32)
    C.batchnorm_forward_train(out, sm, si, rm, rv, x, gamma, beta, 0.1, eps)

    xt = T(x, True)
    gt = None if gamma is None else T(gamma[:c], True)
    bt = None if beta is None else T(beta[:c], True)
    rmt, rvt = T(rm0[:c]), T(rv0[:c])
    y = F.batch_norm(xt, rmt, rvt, gt, bt, training=True, momentum=0.1, eps=eps)
    close(out, npy(y), "batchnorm train out")
    x64 = x.astype(np.float64)
    close(sm, x64.mean(axis=(0, 2, 3)), "batchnorm save_mean")
    close(si, 1 / np.sqrt(x64.var(axis=(0, 2, 3)) + eps), "batchnorm save_invstd")
    close(rm[:c], npy(rmt), "batchnorm running_mean")
    close(rv[:c], npy(rvt), "batchnorm running_var (unbiased)")
    assert np.array_equal(rm[c:], rm0[c:]) and np.array_equal(rv[c:], rv0[c:]), \
        "batchnorm_forward_train touched running stats beyond c"

    dx = np.zeros_like(x)
    dg, db = (np.zeros(cf, f32), np.zeros(cf, f32)) if affine else (None, None)
    C.batchnorm_backward(dx, dg, db, dout, x, sm, si, gamma, True)
    y.backward(T(dout))
    close(dx, npy(xt.grad), "batchnorm train dinp", atol=1e-4)
    if affine:
        close(dg[:c], npy(gt.grad), "batchnorm dgamma")
        close(db[:c], npy(bt.grad), "batchnorm dbeta")
        assert not dg[c:].any() and not db[c:].any()


def test_batchnorm_momentum_negative_skips_running_update(rng):
    x, gamma, beta, rm, rv, _ = bn_data(rng, (2, 3, 4, 4), 3)
    rm0, rv0 = rm.copy(), rv.copy()
    out, sm, si = np.empty_like(x), np.empty(3, f32), np.empty(3, f32)
    C.batchnorm_forward_train(out, sm, si, rm, rv, x, gamma, beta, -1.0, 1e-5)
    assert np.array_equal(rm, rm0) and np.array_equal(rv, rv0)


@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
def test_batchnorm_eval_vs_torch(shape, rng, close, isa):
    c, cf, eps = shape[1], shape[1] + 2, 1e-3
    x, gamma, beta, rm, rv, dout = bn_data(rng, shape, cf)
    out = np.empty_like(x)
    C.batchnorm_forward_eval(out, x, gamma, beta, rm, rv, eps)
    xt, gt, bt = T(x, True), T(gamma[:c], True), T(beta[:c], True)
    y = F.batch_norm(xt, T(rm[:c]), T(rv[:c]), gt, bt, training=False, eps=eps)
    close(out, npy(y), "batchnorm eval out")

    invstd = (1.0 / np.sqrt(rv[:c].astype(np.float64) + eps)).astype(f32)
    dx, dg, db = np.zeros_like(x), np.zeros(cf, f32), np.zeros(cf, f32)
    C.batchnorm_backward(dx, dg, db, dout, x, rm[:c].copy(), invstd, gamma, False)
    y.backward(T(dout))
    close(dx, npy(xt.grad), "batchnorm eval dinp")
    close(dg[:c], npy(gt.grad), "batchnorm dgamma")
    close(db[:c], npy(bt.grad), "batchnorm dbeta")
    assert not dg[c:].any() and not db[c:].any()


# BN with a fused epilogue: the unit's gate and the activation that follow BN
# in every DMCP layer.  (n, min_ch, group_size, ngroups, h, w); c = m + ng*g.
EPILOGUE_CASES = [(2, 1, 2, 3, 3, 4), (1, 0, 3, 2, 5, 5), (3, 2, 1, 4, 1, 1), (2, 4, 4, 0, 2, 3)]


def torch_bn_epilogue(xt, rm, rv, gt, bt, Pt, m, g, act, train, eps):
    y = F.batch_norm(xt, rm, rv, gt, bt, training=train, momentum=0.1, eps=eps)
    if Pt is not None:
        y = torch_gate(y, Pt, m, g)
    if act is None:
        return y
    return F.hardtanh(y, 0.0, act) if act else F.relu(y)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("act", [None, 0.0, 6.0], ids=["noact", "relu", "relu6"])
@pytest.mark.parametrize("gated", [True, False], ids=["gate", "nogate"])
@pytest.mark.parametrize("n,m,g,ng,h,w", EPILOGUE_CASES)
def test_batchnorm_epilogue_vs_torch(n, m, g, ng, h, w, gated, act, train, rng, close, isa):
    c, eps = m + ng * g, 1e-5
    cf = c + 2                                     # parameter buffers longer than c
    x, _, beta, rm, rv, dout = bn_data(rng, (n, c, h, w), cf)
    gamma = rng.uniform(0.5, 4.0, cf).astype(f32)  # wide enough that ReLU6 caps some values
    P = rng.uniform(0.2, 1.0, ng).astype(f32) if gated else None
    ep = dict(P=P, min_ch=m, group_size=g, act=act)
    rm0, rv0 = rm.copy(), rv.copy()
    out = np.empty_like(x)
    if train:
        mean, invstd = np.empty(c, f32), np.empty(c, f32)
        C.batchnorm_forward_train(out, mean, invstd, rm, rv, x, gamma, beta, 0.1, eps, **ep)
    else:
        C.batchnorm_forward_eval(out, x, gamma, beta, rm, rv, eps, **ep)
        mean = rm[:c].copy()
        invstd = f32(1.0) / np.sqrt(rv[:c] + f32(eps))
    xt, gt, bt = T(x, True), T(gamma[:c], True), T(beta[:c], True)
    Pt = T(P, True) if gated else None
    rmt, rvt = T(rm0[:c]), T(rv0[:c])
    y = torch_bn_epilogue(xt, rmt, rvt, gt, bt, Pt, m, g, act, train, eps)
    close(out, npy(y), "batchnorm epilogue out")
    if train:
        close(rm[:c], npy(rmt), "batchnorm epilogue running_mean")
        close(rv[:c], npy(rvt), "batchnorm epilogue running_var")

    dx = np.full_like(x, np.nan)                   # overwritten, never read
    dg, db = np.ones(cf, f32), np.ones(cf, f32)    # accumulate onto 1
    dP = np.ones(ng, f32) if gated else None
    C.batchnorm_backward(dx, dg, db, dout, x, mean, invstd, gamma, train, False, beta=beta,
                         dP=dP, **ep)
    y.backward(T(dout))
    close(dx, npy(xt.grad), "batchnorm epilogue dinp", atol=1e-4)
    close(dg[:c], 1 + npy(gt.grad), "batchnorm epilogue dgamma")
    close(db[:c], 1 + npy(bt.grad), "batchnorm epilogue dbeta")
    assert np.all(dg[c:] == 1) and np.all(db[c:] == 1)
    if gated and ng:
        close(dP, 1 + npy(Pt.grad), "batchnorm epilogue dP")
    dx2 = np.ones_like(x)                          # accumulate=True adds onto dinp
    C.batchnorm_backward(dx2, None, None, dout, x, mean, invstd, gamma, train, True, beta=beta,
                         **ep)
    close(dx2, 1 + dx, "batchnorm epilogue dinp accumulate", rtol=1e-6, atol=1e-6)


def test_batchnorm_epilogue_plain_equals_unfused(rng, close):
    """No gate, no act: the keyword path is plain BN; gate and act compose as
    the separate kernels do."""
    x, gamma, beta, rm, rv, dout = bn_data(rng, (2, 7, 5, 6), 7)
    P = rng.uniform(0.2, 1.0, 3).astype(f32)
    mean, invstd = np.empty(7, f32), np.empty(7, f32)
    plain, fused = np.empty_like(x), np.empty_like(x)
    C.batchnorm_forward_train(plain, mean, invstd, rm, rv, x, gamma, beta, -1.0, 1e-5)
    C.batchnorm_forward_train(fused, mean, invstd, rm, rv, x, gamma, beta, -1.0, 1e-5,
                              P=P, min_ch=1, group_size=2, act=6.0)
    gated, want = np.empty_like(x), np.empty_like(x)
    C.gate_forward(gated, plain, P, 1, 2)
    C.relu_forward(want, gated, 6.0)
    close(fused, want, "batchnorm fused vs unfused", rtol=1e-5, atol=1e-5)


def test_batchnorm_epilogue_bad_input(rng):
    x, gamma, beta, rm, rv, _ = bn_data(rng, (2, 7, 3, 3), 7)
    out, mean, invstd = np.empty_like(x), np.empty(7, f32), np.empty(7, f32)
    args = (out, mean, invstd, rm, rv, x, gamma, beta, 0.1, 1e-5)
    with pytest.raises(ValueError, match="min_ch 1 \\+ 2 groups x group_size 2"):
        C.batchnorm_forward_train(*args, P=np.ones(2, f32), min_ch=1, group_size=2)
    with pytest.raises(ValueError, match="act must be None, 0"):
        C.batchnorm_forward_train(*args, act=-1.0)
    with pytest.raises(TypeError, match="'P' must have dtype float32"):
        C.batchnorm_forward_train(*args, P=np.ones(3, np.float64), min_ch=1, group_size=2)
    with pytest.raises(ValueError, match="'dP' needs 'P'"):
        C.batchnorm_backward(None, None, None, x, x, mean, invstd, gamma, True, dP=np.ones(3, f32))
    with pytest.raises(TypeError):
        C.batchnorm_forward_train(*args, bogus=1)


# ---------------------------------------------------------------- elementwise

@pytest.mark.parametrize("cap", [0.0, 6.0], ids=["relu", "relu6"])
def test_relu_vs_torch(cap, rng, close, isa):
    x = randn(rng, 3, 4, 5, 7, scale=5.0)       # many values above 6, none exactly 0 or 6
    dout = randn(rng, *x.shape)
    out = np.empty_like(x)
    C.relu_forward(out, x, cap)
    xt = T(x, True)
    y = F.relu6(xt) if cap else F.relu(xt)
    close(out, npy(y), "relu", rtol=0, atol=0)
    dx = np.ones_like(x)                          # accumulates onto 1
    C.relu_backward(dx, dout, out, cap)
    y.backward(T(dout))
    close(dx, 1 + npy(xt.grad).astype(f32), "relu", rtol=0, atol=0)
    inplace = x.copy()                           # out may alias inp
    C.relu_forward(inplace, inplace, cap)
    close(inplace, out, "relu", rtol=0, atol=0)
    over = np.full_like(x, np.nan)               # accumulate=False overwrites, reads nothing
    C.relu_backward(over, dout, out, cap, False)
    close(over, npy(xt.grad), "relu", rtol=0, atol=0)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_batchnorm_backward_overwrite(train, rng, close, isa):
    """accumulate=False: dinp = the gradient whatever it held (NaN here); the
    parameter gradients still accumulate."""
    shape = (3, 5, 6, 7)
    x, gamma, _, _, _, dout = bn_data(rng, shape, 7)
    mean = x.mean(axis=(0, 2, 3)).astype(f32)
    invstd = (1 / np.sqrt(x.var(axis=(0, 2, 3)) + 1e-5)).astype(f32)
    want_dx = np.zeros_like(x)
    want_dg, want_db = np.ones(7, f32), np.ones(7, f32)
    C.batchnorm_backward(want_dx, want_dg, want_db, dout, x, mean, invstd, gamma, train)
    dx = np.full_like(x, np.nan)
    dg, db = np.ones(7, f32), np.ones(7, f32)
    C.batchnorm_backward(dx, dg, db, dout, x, mean, invstd, gamma, train, False)
    close(dx, want_dx, "batchnorm overwrite dinp", rtol=0, atol=0)
    close(dg, want_dg, "batchnorm overwrite dgamma", rtol=0, atol=0)
    close(db, want_db, "batchnorm overwrite dbeta", rtol=0, atol=0)


def test_batchnorm_streamed_output_equals_the_cached_path(rng, isa):
    """Tensors of 32 MB and more write BN's outputs with streaming stores, with
    an unaligned head and tail per row (hw = 4097): bit-identical to the same
    channels run below the threshold (BN is per channel and its blocking does
    not change results), forward with an epilogue and backward overwriting."""
    n, c, h, w = 4, 512, 1, 4097                       # 33.6 MB
    x = randn(rng, n, c, h, w)
    dout = randn(rng, n, c, h, w)
    gamma, beta = randn(rng, c), randn(rng, c)

    def run(xs, ds, g, b):
        k = xs.shape[1]
        out, m, iv = np.empty_like(xs), np.empty(k, f32), np.empty(k, f32)
        C.batchnorm_forward_train(out, m, iv, np.zeros(k, f32), np.ones(k, f32), xs, g, b,
                                  0.1, 1e-5, act=6.0)
        dx, dg, db = np.full_like(xs, np.nan), np.zeros(k, f32), np.zeros(k, f32)
        C.batchnorm_backward(dx, dg, db, ds, xs, m, iv, g, True, False, beta=b, act=6.0)
        return out, dx, dg, db

    big = run(x, dout, gamma, beta)
    for sl in (slice(0, 96), slice(300, 512)):         # 6.3 and 14 MB: the cached path
        part = run(np.ascontiguousarray(x[:, sl]), np.ascontiguousarray(dout[:, sl]),
                   gamma[sl].copy(), beta[sl].copy())
        for label, got, want in zip(("out", "dx"), big[:2], part[:2]):
            np.testing.assert_array_equal(got[:, sl], want, err_msg=label)
        for label, got, want in zip(("dgamma", "dbeta"), big[2:], part[2:]):
            np.testing.assert_array_equal(got[sl], want, err_msg=label)


def test_relu_default_cap_and_large(rng, close):
    x = randn(rng, 70000, scale=10.0)            # above the OpenMP threshold
    out = np.empty_like(x)
    C.relu_forward(out, x)
    close(out, np.maximum(x, 0), "relu", rtol=0, atol=0)


def test_add(rng, close, isa):
    a, b = randn(rng, 2, 3, 5, 5), randn(rng, 2, 3, 5, 5)
    out = np.empty_like(a)
    C.add_forward(out, a, b)
    close(out, a + b, "add", rtol=0, atol=0)
    d = randn(rng, *a.shape)
    acc = np.ones_like(a)
    C.add_backward(acc, d)
    C.add_backward(acc, d)
    close(acc, 1 + d + d, "add", rtol=0, atol=0)


@pytest.mark.parametrize("act", [0.0, 6.0], ids=["relu", "relu6"])
@pytest.mark.parametrize("size", [(2, 3, 5, 5), (4, 16, 32, 33)], ids=["small", "threaded"])
def test_add_act(act, size, rng, close, isa):
    """add_forward with an activation equals PyTorch's add then ReLU / ReLU6,
    also written in place over its first operand."""
    a, b = randn(rng, *size, scale=4.0), randn(rng, *size, scale=4.0)
    want = torch.clamp(torch.from_numpy(a) + torch.from_numpy(b), 0.0,
                       act if act > 0 else None).numpy()
    out = np.empty_like(a)
    C.add_forward(out, a, b, act)
    close(out, want, "add_act", rtol=0, atol=0)
    C.add_forward(a, a, b, act)
    close(a, want, "add_act in place", rtol=0, atol=0)
    with pytest.raises(ValueError, match="act must be None, 0"):
        C.add_forward(out, a, b, -1.0)


MAXPOOL_CASES = [  # n, c, h, w, k, s, p
    (2, 3, 8, 8, 3, 2, 1), (1, 2, 7, 9, 3, 2, 1), (2, 2, 8, 8, 2, 2, 0),
    (1, 3, 7, 7, 2, 2, 0), (2, 2, 5, 6, 3, 1, 1), (1, 1, 1, 1, 1, 1, 0),
    (1, 2, 4, 5, 2, 1, 1), (1, 2, 9, 9, 3, 3, 0),
    # wide enough for maxpool_row's vectorised interior between the border columns
    (3, 4, 17, 23, 3, 2, 1), (2, 3, 30, 31, 5, 2, 2), (1, 2, 2, 40, 3, 1, 1),
]


@pytest.mark.parametrize("n,c,h,w,k,s,p", MAXPOOL_CASES)
def test_maxpool2d_vs_torch(n, c, h, w, k, s, p, rng, close):
    size = n * c * h * w
    x = ((rng.permutation(size) - size / 2) * 0.25).astype(f32).reshape(n, c, h, w)   # no ties
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out, am = np.empty((n, c, oh, ow), f32), np.empty((n, c, oh, ow), np.int32)
    C.maxpool2d_forward(out, am, x, k, s, p)
    xt = T(x, True)
    y, idx = F.max_pool2d(xt, k, s, p, return_indices=True)
    close(out, npy(y), "maxpool2d", rtol=0, atol=0)
    assert np.array_equal(am, idx.numpy()), "argmax differs from torch's flat indices"
    dout = randn(rng, n, c, oh, ow)
    dx = np.zeros_like(x)
    C.maxpool2d_backward(dx, dout, am)
    y.backward(T(dout))
    close(dx, npy(xt.grad), "maxpool2d", rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["ties", "nan"])
@pytest.mark.parametrize("n,c,h,w,k,s,p", MAXPOOL_CASES[-4:])
def test_maxpool2d_ties_and_nan_pick_what_torch_picks(n, c, h, w, k, s, p, kind, rng):
    """Among equal values the first tap (row-major) wins; a NaN takes the max
    and a later NaN takes over, as in PyTorch's CPU kernel."""
    x = np.round(rng.standard_normal((n, c, h, w))).astype(f32)     # many ties
    if kind == "nan":
        x[rng.random(x.shape) < 0.1] = np.nan
    oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    out, am = np.empty((n, c, oh, ow), f32), np.empty((n, c, oh, ow), np.int32)
    C.maxpool2d_forward(out, am, x, k, s, p)
    y, idx = F.max_pool2d(torch.from_numpy(x), k, s, p, return_indices=True)
    np.testing.assert_array_equal(out, y.numpy())
    np.testing.assert_array_equal(am, idx.numpy())


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 1, 1, 1), (3, 4, 7, 7), (1, 2, 1, 9)], ids=str)
def test_avgpool_global_vs_torch(shape, rng, close):
    x = randn(rng, *shape)
    out = np.empty(shape[:2], f32)
    C.avgpool_global_forward(out, x)
    xt = T(x, True)
    y = xt.mean(dim=(2, 3))
    close(out, npy(y), "avgpool_global")
    dout = randn(rng, *shape[:2])
    dx = np.zeros_like(x)
    C.avgpool_global_backward(dx, dout)
    y.backward(T(dout))
    close(dx, npy(xt.grad), "avgpool_global")


# ---------------------------------------------------------------- linear

LINEAR_CASES = {  # n, in_f, out_f, in_full, out_full
    "plain": (4, 5, 3, 5, 3),
    "batch1": (1, 7, 2, 7, 2),
    "sliced": (3, 6, 4, 9, 7),
    "one": (5, 1, 1, 1, 1),
    "sliced_big": (2, 33, 17, 40, 20),
}


def linear_run(args, x, wf, bf, dout, naive=False):
    n, in_f, out_f, in_full, out_full = args
    out = np.full((n, out_f), np.nan, f32)
    (C.linear_forward_naive if naive else C.linear_forward)(out, x, wf, bf)
    dx, dw = np.zeros_like(x), np.zeros_like(wf)
    db = None if bf is None else np.zeros_like(bf)
    (C.linear_backward_naive if naive else C.linear_backward)(dx, dw, db, dout, x, wf)
    return out, dx, dw, db


@pytest.mark.parametrize("naive", [False, True], ids=["fast", "naive"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("name", list(LINEAR_CASES))
def test_linear_vs_torch(name, bias, naive, rng, close):
    n, in_f, out_f, in_full, out_full = args = LINEAR_CASES[name]
    x, wf = randn(rng, n, in_f), randn(rng, out_full, in_full, scale=0.3)
    bf = randn(rng, out_full) if bias else None
    dout = randn(rng, n, out_f)
    out, dx, dw, db = linear_run(args, x, wf, bf, dout, naive)
    xt, wt = T(x, True), T(wf[:out_f, :in_f], True)
    bt = T(bf[:out_f], True) if bias else None
    y = F.linear(xt, wt, bt)
    y.backward(T(dout))
    close(out, npy(y), "linear out")
    close(dx, npy(xt.grad), "linear dinp")
    close(dw[:out_f, :in_f], npy(wt.grad), "linear dweight")
    rest = dw.copy()
    rest[:out_f, :in_f] = 0
    assert not rest.any(), "linear_backward wrote dweight outside [:out_f, :in_f]"
    if bias:
        close(db[:out_f], npy(bt.grad), "linear dbias")
        assert not db[out_f:].any()


@pytest.mark.parametrize("name", list(LINEAR_CASES))
def test_linear_matches_naive_and_accumulates(name, rng, close):
    n, in_f, out_f, in_full, out_full = args = LINEAR_CASES[name]
    x, wf, bf = randn(rng, n, in_f), randn(rng, out_full, in_full), randn(rng, out_full)
    dout = randn(rng, n, out_f)
    fast = linear_run(args, x, wf, bf, dout)
    naive = linear_run(args, x, wf, bf, dout, naive=True)
    for g, r in zip(fast, naive):
        close(g, r, "linear vs naive", rtol=1e-5, atol=1e-6)
    grads = [np.zeros_like(x), np.zeros_like(wf), np.zeros_like(bf)]
    C.linear_backward(*grads, dout, x, wf)
    C.linear_backward(*grads, dout, x, wf)
    for g, r in zip(grads, fast[1:]):
        close(g, 2 * r, "linear accumulate", rtol=1e-6, atol=0)


# ---------------------------------------------------------------- dropout

def test_dropout_mask_rate_and_backward(rng, close):
    p = 0.3
    x = randn(rng, 200_000)
    out, mask = np.empty_like(x), np.empty_like(x)
    C.dropout_forward(out, mask, x, p, 12345)
    scale = f32(1) / (f32(1) - f32(p))
    assert set(np.unique(mask)) <= {f32(0), scale}, np.unique(mask)
    rate = float((mask == 0).mean())
    assert abs(rate - p) < 0.005, rate                      # 5 sigma ~ 0.005 at n = 2e5
    close(out, x * mask, "dropout", rtol=0, atol=0)
    dout = randn(rng, *x.shape)
    dx = np.ones_like(x)
    C.dropout_backward(dx, dout, mask)
    close(dx, 1 + dout * mask, "dropout", rtol=0, atol=0)

    out2, mask2 = np.empty_like(x), np.empty_like(x)
    C.dropout_forward(out2, mask2, x, p, 12345)
    assert np.array_equal(mask, mask2), "same seed must give the same mask"
    C.dropout_forward(out2, mask2, x, p, 12346)
    assert (mask != mask2).mean() > 0.3, "a different seed must give a different mask"
    C.dropout_forward(out2, mask2, x, 0.0, 7)
    assert np.all(mask2 == 1) and np.array_equal(out2, x), "p = 0 keeps everything"


def test_dropout_small_tensor_prefix_of_large(rng):
    """Counter-based: element i's mask does not depend on the tensor length."""
    x = randn(rng, 50_000)
    out, mask = np.empty_like(x), np.empty_like(x)
    C.dropout_forward(out, mask, x, 0.5, 99)
    small = x[:100].copy()
    out_s, mask_s = np.empty_like(small), np.empty_like(small)
    C.dropout_forward(out_s, mask_s, small, 0.5, 99)
    assert np.array_equal(mask_s, mask[:100])


# ---------------------------------------------------------------- losses

CE_CASES = [(5, 7, 1.0), (1, 3, 1.0), (8, 10, 20.0), (6, 2, 3.0)]


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("n,k,scale", CE_CASES)
def test_crossentropy_vs_torch(n, k, scale, smoothing, rng, close):
    x = randn(rng, n, k, scale=scale)
    labels = rng.integers(0, k, n).astype(np.int64)
    losses, probs = np.empty(n, f32), np.empty_like(x)
    C.crossentropy_forward(losses, probs, x, labels, smoothing)
    xt = T(x, True)
    lt = torch.tensor(labels)
    per = F.cross_entropy(xt, lt, reduction="none", label_smoothing=smoothing)
    mean = F.cross_entropy(xt, lt, label_smoothing=smoothing)
    close(losses, npy(per), "crossentropy loss")
    close(losses.mean(dtype=np.float64), npy(mean), "crossentropy loss")
    close(probs, npy(torch.softmax(xt, 1)), "crossentropy probs")
    dx = np.zeros_like(x)
    C.crossentropy_backward(dx, probs, labels, smoothing, 1.0 / n)
    mean.backward()
    close(dx, npy(xt.grad), "crossentropy dlogits")
    C.crossentropy_backward(dx, probs, labels, smoothing, 1.0 / n)     # accumulates
    close(dx, 2 * npy(xt.grad), "crossentropy dlogits")


@pytest.mark.parametrize("tau", [1.0, 4.0])
@pytest.mark.parametrize("n,k,scale", CE_CASES)
def test_kldiv_vs_torch(n, k, scale, tau, rng, close):
    s, t = randn(rng, n, k, scale=scale), randn(rng, n, k, scale=scale)
    losses, ps, pt = np.empty(n, f32), np.empty_like(s), np.empty_like(s)
    C.kldiv_forward(losses, ps, pt, s, t, tau)
    st, tt = T(s, True), T(t)
    ref = tau ** 2 * F.kl_div(F.log_softmax(st / tau, 1), F.softmax(tt / tau, 1), reduction="batchmean")
    close(losses.mean(dtype=np.float64), npy(ref), "kldiv loss", atol=1e-6)
    close(ps, npy(F.softmax(st / tau, 1)), "kldiv probs")
    close(pt, npy(F.softmax(tt / tau, 1)), "kldiv probs")
    ds = np.zeros_like(s)
    C.kldiv_backward(ds, ps, pt, tau, 1.0 / n)
    ref.backward()
    close(ds, npy(st.grad), "kldiv dstudent")


# ---------------------------------------------------------------- optimisers

@pytest.mark.parametrize("momentum,nesterov,wd,dampening", [
    (0.9, False, 1e-2, 0.0), (0.9, True, 5e-4, 0.0), (0.0, False, 1e-2, 0.0),
    (0.5, False, 0.0, 0.3),
])
def test_sgd_vs_torch(momentum, nesterov, wd, dampening, rng, close):
    shape, lr = (5, 7), 0.1
    p = randn(rng, *shape)
    grads = [randn(rng, *shape) for _ in range(3)]
    buf = np.zeros_like(p) if momentum else None
    pt = T(p, True)
    opt = torch.optim.SGD([pt], lr=lr, momentum=momentum, dampening=dampening,
                          weight_decay=wd, nesterov=nesterov)
    for i, g in enumerate(grads):
        C.sgd_step(p, buf, g, lr, momentum, dampening, wd, nesterov, i == 0)
        pt.grad = T(g)
        opt.step()
        close(p, npy(pt), "sgd_step", rtol=1e-6, atol=1e-6)
        if momentum:
            close(buf, npy(opt.state[pt]["momentum_buffer"]), "sgd_step", rtol=1e-6, atol=1e-6)


def test_adam_vs_torch(rng, close):
    shape, lr, betas, eps, wd = (4, 9), 1e-2, (0.9, 0.999), 1e-8, 1e-2
    p = randn(rng, *shape)
    m, v = np.zeros_like(p), np.zeros_like(p)
    pt = T(p, True)
    opt = torch.optim.Adam([pt], lr=lr, betas=betas, eps=eps, weight_decay=wd)
    for step in range(1, 4):
        g = randn(rng, *shape)
        C.adam_step(p, m, v, g, lr, *betas, eps, wd, step)
        pt.grad = T(g)
        opt.step()
        close(p, npy(pt), "adam_step", rtol=1e-6, atol=1e-6)
        close(m, npy(opt.state[pt]["exp_avg"]), "adam_step", rtol=1e-5, atol=1e-7)
        # 1 - beta2 is formed in float32 (1 - 0.999f = 0.0009999871): v is off by ~1.3e-5 relative
        close(v, npy(opt.state[pt]["exp_avg_sq"]), "adam_step exp_avg_sq", rtol=1e-4, atol=1e-9)


# ---------------------------------------------------------------- Markov gates

def torch_keep(a, prob_type):
    return torch.sigmoid(a) if prob_type == 0 else torch.exp(-torch.clamp(a, min=0))


@pytest.mark.parametrize("prob_type", [0, 1], ids=["sigmoid", "exp"])
@pytest.mark.parametrize("n", [1, 5, 8])
def test_markov_probs_vs_torch(n, prob_type, rng, close):
    alpha = rng.uniform(-3, 3, n).astype(f32)
    alpha[np.abs(alpha) < 1e-3] = 0.5                # stay off the kink of max(a, 0)
    P = np.empty(n, f32)
    C.markov_probs_forward(P, alpha, prob_type)
    at = T(alpha, True)
    Pt = torch.cumprod(torch_keep(at, prob_type), 0)
    close(P, npy(Pt), "markov_probs", rtol=1e-5, atol=1e-7)
    dP = randn(rng, n)
    da = np.ones(n, f32)                                 # accumulates onto 1
    C.markov_probs_backward(da, dP, P, alpha, prob_type)
    (Pt * T(dP)).sum().backward()
    close(da, 1 + npy(at.grad), "markov_probs", rtol=1e-5, atol=1e-6)


GATE_CASES = [  # n, min_ch, group_size, ngroups, h, w
    (2, 3, 2, 4, 3, 2), (1, 0, 4, 3, 2, 2), (3, 5, 1, 6, 1, 1), (2, 4, 3, 0, 2, 3), (1, 1, 8, 2, 5, 5),
]


def torch_gate(x, P, m, g):
    return x * torch.cat([torch.ones(m, dtype=f64), P.repeat_interleave(g)]).view(1, -1, 1, 1)


@pytest.mark.parametrize("n,m,g,ng,h,w", GATE_CASES)
def test_gate_vs_torch(n, m, g, ng, h, w, rng, close):
    c = m + ng * g
    x = randn(rng, n, c, h, w)
    P = rng.uniform(0.05, 1.0, ng).astype(f32)
    out = np.empty_like(x)
    C.gate_forward(out, x, P, m, g)
    xt, Pt = T(x, True), T(P, True)
    y = torch_gate(xt, Pt, m, g)
    close(out, npy(y).astype(f32), "gate", rtol=0, atol=0)     # one float32 product: exact
    inplace = x.copy()
    C.gate_forward(inplace, inplace, P, m, g)            # out may alias inp
    close(inplace, out, "gate", rtol=0, atol=0)
    dout = randn(rng, *x.shape)
    dx, dP = np.zeros_like(x), np.zeros_like(P)
    C.gate_backward(dx, dP, dout, x, P, m, g)
    y.backward(T(dout))
    close(dx, npy(xt.grad), "gate dinp")
    if ng:
        close(dP, npy(Pt.grad), "gate dP")
    dP2 = np.zeros_like(P)
    C.gate_backward(None, dP2, dout, x, P, m, g)          # optional outputs
    C.gate_backward(None, dP2, dout, x, P, m, g)
    close(dP2, 2 * dP, "gate dP", rtol=1e-6, atol=0)
    over = np.full_like(x, np.nan)                       # accumulate=False overwrites dinp
    C.gate_backward(over, None, dout, x, P, m, g, False)
    close(over, dx, "gate dinp", rtol=0, atol=0)


# ---------------------------------------------------------------- expected FLOPs

# A made-up 3-unit network: stem conv 3 -> u0 (3x3, 16x16 out), conv u0 -> u1
# (3x3 stride 2, 8x8 out), depthwise on u1 (3x3, 8x8), pointwise u1 -> u2 (8x8),
# linear u2 -> 10, and a fixed layer (2 x 5 channels).
FLOPS_UNITS = np.array([[0, 3, 2, 2],      # offset, ngroups, min_ch, group_size: C = 8
                        [3, 4, 4, 4],      # C = 20
                        [7, 2, 1, 3]],     # C = 7
                       np.int32)
FLOPS_TERMS = np.array([[-1, 0, 3, 0, 9 * 16 * 16],
                        [0, 1, 0, 0, 9 * 8 * 8],
                        [1, -1, 0, 1, 9 * 8 * 8],
                        [1, 2, 0, 0, 8 * 8],
                        [2, -1, 0, 10, 1],
                        [-1, -1, 2, 5, 7]], np.float64)


def torch_flops_of_widths(E):
    total = 0
    for ua, ub, ca, cb, coef in FLOPS_TERMS:
        a = E[int(ua)] if ua >= 0 else ca
        b = E[int(ub)] if ub >= 0 else cb
        total = total + coef * a * b
    return total


def torch_expected_widths(alpha, prob_type):
    E = []
    for off, ng, m, g in FLOPS_UNITS:
        P = torch.cumprod(torch_keep(alpha[off:off + ng], prob_type), 0)
        E.append(m + g * P.sum())
    return E


def test_flops_of_widths_vs_torch(rng, close):
    widths = rng.uniform(1, 20, 3)
    dw = np.ones(3)
    got = C.flops_of_widths(widths, FLOPS_TERMS, dw)
    Et = T(widths, True)
    ref = torch_flops_of_widths([Et[i] for i in range(3)])
    ref.backward()
    close(got, npy(ref), "flops_of_widths", rtol=1e-12, atol=0)
    close(dw, 1 + npy(Et.grad), "flops_of_widths", rtol=1e-12, atol=0)
    assert C.flops_of_widths(widths, FLOPS_TERMS) == got


@pytest.mark.parametrize("prob_type", [0, 1], ids=["sigmoid", "exp"])
def test_flops_expected_vs_torch(prob_type, rng, close):
    alpha = rng.uniform(-2, 2, 9).astype(f32)
    alpha[np.abs(alpha) < 1e-3] = 0.5
    at = T(alpha, True)
    ref = torch_flops_of_widths(torch_expected_widths(at, prob_type))
    ref.backward()
    scale = 1e-3
    dalpha = np.zeros(9, f32)
    got = C.flops_expected(alpha, FLOPS_UNITS, FLOPS_TERMS, prob_type, dalpha, scale)
    close(got, npy(ref), "flops_expected", rtol=1e-6, atol=0)
    close(dalpha, scale * npy(at.grad), "flops_expected dalpha", rtol=1e-5, atol=0)
    assert C.flops_expected(alpha, FLOPS_UNITS, FLOPS_TERMS, prob_type) == got
    # all groups kept (alpha -> +inf for sigmoid, alpha <= 0 for exp): full-width MACs
    full = np.full(9, 30.0 if prob_type == 0 else -1.0, f32)
    widths = np.array([8.0, 20.0, 7.0])
    close(C.flops_expected(full, FLOPS_UNITS, FLOPS_TERMS, prob_type),
          C.flops_of_widths(widths, FLOPS_TERMS), "flops_expected", rtol=1e-6, atol=0)


# ---------------------------------------------------------------- finite differences

def fd_check(loss, params, grads, close, family, eps=1e-2, rtol=1e-2, atol=1e-3):
    """Central differences of loss() (float64 of dmcp's float32 forward) against
    the analytic grads, over every entry of the (tiny) float32 params."""
    for p, g in zip(params, grads):
        num = np.zeros(p.shape)
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + f32(eps)
            hi, lp = p[idx], loss()
            p[idx] = old - f32(eps)
            lo, lm = p[idx], loss()
            p[idx] = old
            num[idx] = (lp - lm) / (float(hi) - float(lo))
        close(g, num, family, rtol=rtol, atol=atol)


@pytest.mark.parametrize("name,cs", [
    ("3x3_s2_p1", conv_case(1, 2, 5, 6, 3, 3, 2, 1)),
    ("dw3x3_p1", conv_case(2, 3, 4, 5, 3, 3, 1, 1, 1, 3)),
    ("dw3x3_s2_dil2", conv_case(1, 2, 7, 6, 2, 3, 2, 2, 2, 2)),
    ("1x1_g2", conv_case(1, 4, 3, 3, 4, 1, 1, 0, 1, 2)),
])
def test_fd_conv2d(name, cs, rng, close):
    x, wt, b, R = conv_data(rng, cs, True)
    out = np.empty_like(R)

    def loss():
        C.conv2d_forward(out, x, wt, b, *conv_args(cs))
        return float((out.astype(np.float64) * R).sum())

    _, dx, dw, db = dmcp_conv(cs, x, wt, b, R)
    fd_check(loss, [x, wt, b], [dx, dw, db], close, "fd conv2d")


def test_fd_batchnorm_train(rng, close):
    x, gamma, beta, rm, rv, R = bn_data(rng, (2, 2, 2, 3), 2)
    out, sm, si = np.empty_like(x), np.empty(2, f32), np.empty(2, f32)

    def loss():
        C.batchnorm_forward_train(out, sm, si, rm, rv, x, gamma, beta, -1.0, 1e-5)
        return float((out.astype(np.float64) * R).sum())

    loss()
    dx, dg, db = np.zeros_like(x), np.zeros_like(gamma), np.zeros_like(beta)
    C.batchnorm_backward(dx, dg, db, R, x, sm.copy(), si.copy(), gamma, True)
    fd_check(loss, [x, gamma, beta], [dx, dg, db], close, "fd batchnorm", eps=1e-2)


def test_fd_linear(rng, close):
    x, wf, bf, R = randn(rng, 2, 3), randn(rng, 5, 4), randn(rng, 5), randn(rng, 2, 4)
    out = np.empty((2, 4), f32)

    def loss():
        C.linear_forward(out, x, wf, bf)
        return float((out.astype(np.float64) * R).sum())

    _, dx, dw, db = linear_run((2, 3, 4, 4, 5), x, wf, bf, R)
    fd_check(loss, [x, wf, bf], [dx, dw, db], close, "fd linear")


def test_fd_maxpool2d(rng, close):
    x = ((rng.permutation(50) - 25) * 0.1).astype(f32).reshape(1, 2, 5, 5)   # gaps 0.1 >> eps
    out, am = np.empty((1, 2, 3, 3), f32), np.empty((1, 2, 3, 3), np.int32)
    R = randn(rng, 1, 2, 3, 3)

    def loss():
        C.maxpool2d_forward(out, am, x, 3, 2, 1)
        return float((out.astype(np.float64) * R).sum())

    loss()
    dx = np.zeros_like(x)
    C.maxpool2d_backward(dx, R, am.copy())
    fd_check(loss, [x], [dx], close, "fd maxpool2d")


def test_fd_crossentropy(rng, close):
    x, labels = randn(rng, 3, 4), np.array([0, 3, 1], np.int64)
    losses, probs = np.empty(3, f32), np.empty_like(x)

    def loss():
        C.crossentropy_forward(losses, probs, x, labels, 0.1)
        return float(losses.astype(np.float64).mean())

    loss()
    dx = np.zeros_like(x)
    C.crossentropy_backward(dx, probs, labels, 0.1, 1.0 / 3)
    fd_check(loss, [x], [dx], close, "fd crossentropy")


def test_fd_kldiv(rng, close):
    s, t, tau = randn(rng, 2, 5), randn(rng, 2, 5), 2.0
    losses, ps, pt = np.empty(2, f32), np.empty_like(s), np.empty_like(s)

    def loss():
        C.kldiv_forward(losses, ps, pt, s, t, tau)
        return float(losses.astype(np.float64).mean())

    loss()
    ds = np.zeros_like(s)
    C.kldiv_backward(ds, ps, pt, tau, 0.5)
    fd_check(loss, [s], [ds], close, "fd kldiv")


@pytest.mark.parametrize("prob_type", [0, 1], ids=["sigmoid", "exp"])
def test_fd_gate_and_markov_probs(prob_type, rng, close):
    m, g, ng = 1, 2, 3
    x = randn(rng, 2, m + ng * g, 2, 2)
    alpha = np.array([0.7, -1.2, 1.9] if prob_type == 0 else [0.4, -0.8, 1.3], f32)
    R = randn(rng, *x.shape)
    P, out = np.empty(ng, f32), np.empty_like(x)

    def loss():
        C.markov_probs_forward(P, alpha, prob_type)
        C.gate_forward(out, x, P, m, g)
        return float((out.astype(np.float64) * R).sum())

    loss()
    dx, dP, da = np.zeros_like(x), np.zeros(ng, f32), np.zeros(ng, f32)
    C.gate_backward(dx, dP, R, x, P, m, g)
    C.markov_probs_backward(da, dP, P, alpha, prob_type)
    fd_check(loss, [x, alpha], [dx, da], close, "fd gate+markov")


def test_fd_batchnorm_gated(rng, close):
    """BN + gate (with its Markov probabilities) in one kernel, in training mode."""
    m, g, ng = 1, 2, 2
    x, gamma, beta, rm, rv, R = bn_data(rng, (2, m + ng * g, 2, 2), m + ng * g)
    alpha = np.array([0.6, -0.9], f32)
    P, out = np.empty(ng, f32), np.empty_like(x)
    sm, si = np.empty(x.shape[1], f32), np.empty(x.shape[1], f32)

    def loss():
        C.markov_probs_forward(P, alpha, 0)
        C.batchnorm_forward_train(out, sm, si, rm, rv, x, gamma, beta, -1.0, 1e-5,
                                  P=P, min_ch=m, group_size=g)
        return float((out.astype(np.float64) * R).sum())

    loss()
    dx, dg, db = np.zeros_like(x), np.zeros_like(gamma), np.zeros_like(beta)
    dP, da = np.zeros(ng, f32), np.zeros(ng, f32)
    C.batchnorm_backward(dx, dg, db, R, x, sm.copy(), si.copy(), gamma, True, beta=beta,
                         P=P, dP=dP, min_ch=m, group_size=g)
    C.markov_probs_backward(da, dP, P, alpha, 0)
    fd_check(loss, [x, gamma, beta, alpha], [dx, dg, db, da], close, "fd batchnorm gated")


@pytest.mark.parametrize("prob_type", [0, 1], ids=["sigmoid", "exp"])
def test_fd_flops_expected(prob_type, rng, close):
    alpha = rng.uniform(-2, 2, 9).astype(f32)
    alpha[np.abs(alpha) < 0.05] = 0.5                # exp: keep eps away from the kink at 0
    dalpha = np.zeros(9, f32)
    C.flops_expected(alpha, FLOPS_UNITS, FLOPS_TERMS, prob_type, dalpha)
    fd_check(lambda: C.flops_expected(alpha, FLOPS_UNITS, FLOPS_TERMS, prob_type),
             [alpha], [dalpha], close, "fd flops_expected", eps=1e-3, rtol=1e-3, atol=0)


# ---------------------------------------------------------------- thread independence

THREAD_SCRIPT = textwrap.dedent("""
    import sys
    import numpy as np
    import dmcp                             # applies DMCP_ISA
    from dmcp import _C as C
    f32 = np.float32
    rng = np.random.default_rng(7)
    r = lambda *s: rng.standard_normal(s).astype(f32)
    res = {}
    # dense 3x3 conv, big enough to cross the OpenMP/BLAS thresholds
    x, w, b = r(4, 8, 16, 16), r(16, 8, 3, 3), r(16)
    # BN with rows longer than its 256-float chunks and not a multiple of them
    xl = r(3, 5, 23, 29)
    gl, bl = r(5), r(5)
    lo, lm, li = np.empty_like(xl), np.empty(5, f32), np.empty(5, f32)
    C.batchnorm_forward_train(lo, lm, li, np.zeros(5, f32), np.ones(5, f32), xl, gl, bl, 0.1, 1e-5,
                              act=0.0)
    ldx = np.empty_like(xl)
    C.batchnorm_backward(ldx, None, None, r(*xl.shape), xl, lm, li, gl, True, False, beta=bl,
                         act=0.0)
    res.update(bnl_out=lo, bnl_dx=ldx)
    out = np.empty((4, 16, 8, 8), f32)
    C.conv2d_forward(out, x, w, b, 2, 2, 1, 1, 1, 1, 1)
    dout = r(*out.shape)
    dx, dw, db = np.zeros_like(x), np.zeros_like(w), np.zeros_like(b)
    C.conv2d_backward(dx, dw, db, dout, x, w, 2, 2, 1, 1, 1, 1, 1)
    res.update(conv_out=out, conv_dx=dx, conv_dw=dw, conv_db=db)
    # Winograd 3x3 (>= 16 channels, stride 1)
    xw, ww = r(4, 16, 24, 22), r(24, 16, 3, 3)
    outw = np.empty((4, 24, 24, 22), f32)
    C.conv2d_forward(outw, xw, ww, None, 1, 1, 1, 1, 1, 1, 1)
    dxw, dww = np.zeros_like(xw), np.zeros_like(ww)
    C.conv2d_backward(dxw, dww, None, r(*outw.shape), xw, ww, 1, 1, 1, 1, 1, 1, 1)
    res.update(wino_out=outw, wino_dx=dxw, wino_dw=dww)
    xw2, ww2 = r(9, 64, 20, 19), r(64, 64, 3, 3) * f32(0.1)
    dww2 = np.zeros_like(ww2)
    C.conv2d_backward(None, dww2, None, r(9, 64, 20, 19), xw2, ww2, 1, 1, 1, 1, 1, 1, 1)
    res.update(wino_dw64=dww2)
    # Winograd F(4x4) (>= 64 channels, >= 192 4x4 tiles)
    xw4, ww4 = r(3, 64, 30, 29), r(64, 64, 3, 3) * f32(0.1)
    outw4 = np.empty((3, 64, 30, 29), f32)
    C.conv2d_forward(outw4, xw4, ww4, None, 1, 1, 1, 1, 1, 1, 1)
    dxw4 = np.zeros_like(xw4)
    C.conv2d_backward(dxw4, None, None, r(*outw4.shape), xw4, ww4, 1, 1, 1, 1, 1, 1, 1)
    res.update(wino4_out=outw4, wino4_dx=dxw4)
    # F(4x4) backward-weight (>= 128 channels), over two chunks of tiles
    xw5, ww5 = r(6, 128, 34, 34), r(128, 128, 3, 3) * f32(0.1)
    dww5 = np.zeros_like(ww5)
    C.conv2d_backward(None, dww5, None, r(6, 128, 34, 34), xw5, ww5, 1, 1, 1, 1, 1, 1, 1)
    res.update(wino4_dw=dww5)
    # depthwise 3x3
    wd = r(8, 1, 3, 3)
    outd = np.empty((4, 8, 16, 16), f32)
    C.conv2d_forward(outd, x, wd, None, 1, 1, 1, 1, 1, 1, 8)
    dxd, dwd = np.zeros_like(x), np.zeros_like(wd)
    C.conv2d_backward(dxd, dwd, None, r(*outd.shape), x, wd, 1, 1, 1, 1, 1, 1, 8)
    res.update(dw_out=outd, dw_dx=dxd, dw_dw=dwd)
    xg = r(4, 8, 12, 70)                     # wider than the flat path takes: the grid
    outg = np.empty_like(xg)
    C.conv2d_forward(outg, xg, wd, None, 1, 1, 1, 1, 1, 1, 8)
    dxg, dwg = np.zeros_like(xg), np.zeros_like(wd)
    C.conv2d_backward(dxg, dwg, None, r(*outg.shape), xg, wd, 1, 1, 1, 1, 1, 1, 8)
    res.update(dwg_out=outg, dwg_dx=dxg, dwg_dw=dwg)
    # 1x1 conv and linear (BLAS paths)
    w1 = r(32, 8, 1, 1)
    out1 = np.empty((4, 32, 16, 16), f32)
    C.conv2d_forward(out1, x, w1, None, 1, 1, 0, 0, 1, 1, 1)
    dx1, dw1 = np.zeros_like(x), np.zeros_like(w1)
    C.conv2d_backward(dx1, dw1, None, r(*out1.shape), x, w1, 1, 1, 0, 0, 1, 1, 1)
    res.update(pw_out=out1, pw_dx=dx1, pw_dw=dw1)
    xb = r(2, 8, 32, 32)                     # >= 1024 output pixels: per-image pointwise path
    outb = np.empty((2, 32, 32, 32), f32)
    C.conv2d_forward(outb, xb, w1, None, 1, 1, 0, 0, 1, 1, 1)
    dxb, dwb = np.zeros_like(xb), np.zeros_like(w1)
    C.conv2d_backward(dxb, dwb, None, r(*outb.shape), xb, w1, 1, 1, 0, 0, 1, 1, 1)
    res.update(pwd_out=outb, pwd_dx=dxb, pwd_dw=dwb)
    xl, wl = r(64, 300), r(200, 300)
    outl = np.empty((64, 200), f32)
    C.linear_forward(outl, xl, wl, None)
    dxl, dwl = np.zeros_like(xl), np.zeros_like(wl)
    C.linear_backward(dxl, dwl, None, r(64, 200), xl, wl)
    res.update(lin_out=outl, lin_dx=dxl, lin_dw=dwl)
    # batchnorm train forward/backward
    g, be, rm, rv = r(8), r(8), np.zeros(8, f32), np.ones(8, f32)
    bo, sm, si = np.empty_like(x), np.empty(8, f32), np.empty(8, f32)
    C.batchnorm_forward_train(bo, sm, si, rm, rv, x, g, be, 0.1, 1e-5)
    bdx, bdg, bdb = np.zeros_like(x), np.zeros(8, f32), np.zeros(8, f32)
    C.batchnorm_backward(bdx, bdg, bdb, r(*x.shape), x, sm, si, g, True)
    res.update(bn_out=bo, bn_mean=sm, bn_invstd=si, bn_rm=rm, bn_rv=rv, bn_dx=bdx, bn_dg=bdg, bn_db=bdb)
    P3 = rng.uniform(0.1, 1, 3).astype(f32)
    fo = np.empty_like(x)
    C.batchnorm_forward_train(fo, sm, si, rm, rv, x, g, be, 0.1, 1e-5, P=P3, min_ch=2,
                              group_size=2, act=6.0)
    fdx, fdP = np.empty_like(x), np.zeros(3, f32)
    C.batchnorm_backward(fdx, None, None, r(*x.shape), x, sm, si, g, True, False, beta=be,
                         P=P3, dP=fdP, min_ch=2, group_size=2, act=6.0)
    res.update(bnf_out=fo, bnf_dx=fdx, bnf_dP=fdP)
    # gates and maxpool
    P = rng.uniform(0.1, 1, 3).astype(f32)
    go = np.empty_like(x)
    C.gate_forward(go, x, P, 2, 2)
    gdx, gdP = np.zeros_like(x), np.zeros(3, f32)
    C.gate_backward(gdx, gdP, r(*x.shape), x, P, 2, 2)
    res.update(gate_out=go, gate_dx=gdx, gate_dP=gdP)
    mo, am = np.empty((4, 8, 8, 8), f32), np.empty((4, 8, 8, 8), np.int32)
    C.maxpool2d_forward(mo, am, x, 3, 2, 1)
    mdx = np.zeros_like(x)
    C.maxpool2d_backward(mdx, r(*mo.shape), am)
    res.update(mp_out=mo, mp_am=am, mp_dx=mdx)
    do, mask = np.empty(100000, f32), np.empty(100000, f32)
    C.dropout_forward(do, mask, r(100000), 0.4, 3)
    res.update(dropout_mask=mask)
    np.savez(sys.argv[1], **res)
""")


def test_results_independent_of_thread_count_and_isa(tmp_path):
    """Every kernel variant this CPU runs (base, avx2, avx512), on 1 and 2 threads,
    gives the base 1-thread results to float rounding; integer outputs exactly."""
    script = tmp_path / "run.py"
    script.write_text(THREAD_SCRIPT)
    runs = {}
    for isa in C.isa_available():
        for nt in ("1", "2"):
            env = dict(os.environ, OMP_NUM_THREADS=nt, OPENBLAS_NUM_THREADS=nt, DMCP_ISA=isa,
                       PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
            path = tmp_path / f"{isa}{nt}.npz"
            proc = subprocess.run([sys.executable, str(script), str(path)], env=env,
                                  capture_output=True, text=True, timeout=60)
            assert proc.returncode == 0, proc.stderr
            runs[isa, nt] = np.load(path)
    one = runs["base", "1"]
    for (isa, nt), two in runs.items():
        for key in one.files:
            a, b = one[key], two[key]
            if a.dtype.kind == "i" or key == "dropout_mask":
                assert np.array_equal(a, b), (isa, nt, key)
            else:
                scale = max(1.0, float(np.abs(a).max()))
                np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * scale,
                                           err_msg=f"{key} ({isa}, {nt} threads)")


def test_isa_selection():
    avail = C.isa_available()
    assert avail[0] == "base" and C.isa() in avail
    assert C.isa() == avail[-1] or os.environ.get("DMCP_ISA"), "import picks the best variant"
    prev = C.isa()
    try:
        assert C.set_isa("base") == "base" and C.isa() == "base"
    finally:
        C.set_isa(prev)
    with pytest.raises(ValueError, match="unknown ISA 'sse9'"):
        C.set_isa("sse9")
    with pytest.raises(TypeError, match="must be a str"):
        C.set_isa(2)
    if "avx512" not in avail:
        with pytest.raises(ValueError, match="cannot run the 'avx512' kernels"):
            C.set_isa("avx512")
    assert C.isa() == prev
    env = dict(os.environ, DMCP_ISA="base", PYTHONPATH=REPO)
    out = subprocess.run([sys.executable, "-c", "import dmcp; print(dmcp._C.isa())"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "base", out.stderr
    env["DMCP_ISA"] = "mmx"
    out = subprocess.run([sys.executable, "-c", "import dmcp"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0 and "unknown ISA 'mmx'" in out.stderr
