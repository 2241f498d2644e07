"""The C boundary never trusts its caller: representative bindings reject bad
arrays with TypeError/ValueError naming the function and the argument, and
never crash.  Everything runs in the test process except inputs known to
have crashed it (run in a subprocess, so a crash fails one test)."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dmcp import _C as C

f32, i32, i64, f64 = np.float32, np.int32, np.int64, np.float64
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def z(shape, dtype=f32):
    return np.zeros(shape, dtype)


# binding -> (argument names, builder of valid arguments, writable array args)
# Each builder returns fresh arrays; the valid call must succeed.
BINDINGS = {
    "conv2d_forward": (
        ["out", "inp", "weight", "bias"],
        lambda: [z((2, 4, 6, 6)), z((2, 3, 6, 6)), z((4, 3, 3, 3)), z(4), 1, 1, 1, 1, 1, 1, 1],
        ["out"]),
    "conv2d_backward": (
        ["dinp", "dweight", "dbias", "dout", "inp", "weight"],
        lambda: [z((2, 3, 6, 6)), z((4, 3, 3, 3)), z(4), z((2, 4, 6, 6)), z((2, 3, 6, 6)),
                 z((4, 3, 3, 3)), 1, 1, 1, 1, 1, 1, 1],
        ["dinp", "dweight", "dbias"]),
    "batchnorm_forward_train": (
        ["out", "save_mean", "save_invstd", "running_mean", "running_var", "inp", "gamma", "beta"],
        lambda: [z((2, 3, 4, 4)), z(3), z(3), z(3), np.ones(3, f32), z((2, 3, 4, 4)),
                 np.ones(3, f32), z(3), 0.1, 1e-5],
        ["out", "save_mean", "save_invstd", "running_mean", "running_var"]),
    "linear_forward": (
        ["out", "inp", "weight", "bias"],
        lambda: [z((2, 4)), z((2, 5)), z((4, 5)), z(4)],
        ["out"]),
    "maxpool2d_forward": (
        ["out", "argmax", "inp"],
        lambda: [z((2, 3, 4, 4)), z((2, 3, 4, 4), i32), z((2, 3, 8, 8)), 3, 2, 1],
        ["out", "argmax"]),
    "crossentropy_forward": (
        ["losses", "probs", "logits", "labels"],
        lambda: [z(4), z((4, 5)), z((4, 5)), np.array([0, 4, 2, 1], i64), 0.1],
        ["losses", "probs"]),
    "sgd_step": (
        ["param", "momentum_buffer", "grad"],
        lambda: [z((3, 5)), z((3, 5)), z((3, 5)), 0.1, 0.9, 0.0, 1e-4, False, True],
        ["param", "momentum_buffer"]),
    "gate_forward": (
        ["out", "inp", "P"],
        lambda: [z((2, 7, 3, 3)), z((2, 7, 3, 3)), np.full(3, 0.5, f32), 1, 2],
        ["out"]),
    "flops_expected": (
        ["alpha", "units", "terms", "dalpha"],
        lambda: [z(9), np.array([[0, 3, 2, 2], [3, 4, 4, 4], [7, 2, 1, 3]], i32),
                 np.array([[-1, 0, 3, 0, 2304], [0, 1, 0, 0, 576], [2, -1, 0, 10, 1]], f64),
                 0, z(9), 1.0],
        ["dalpha"]),
}
# flops_expected takes dalpha after prob_type: map argument names to positions explicitly
ARG_POS = {"flops_expected": {"alpha": 0, "units": 1, "terms": 2, "dalpha": 4}}


def pos(fn, arg):
    return ARG_POS.get(fn, {}).get(arg, BINDINGS[fn][0].index(arg))


def call(fn, args):
    return getattr(C, fn)(*args)


def expect(fn, args, exc, arg):
    """The call raises exc with a message naming fn and arg (quoted or not)."""
    with pytest.raises(exc, match=rf"^{fn}: .*\b{arg}\b"):
        call(fn, args)


ARRAY_ARGS = [(fn, a) for fn, (names, _, _) in BINDINGS.items() for a in names]


@pytest.mark.parametrize("fn", list(BINDINGS))
def test_valid_call_succeeds(fn):
    call(fn, BINDINGS[fn][1]())


def wrong_dtypes(arr):
    if arr.dtype == f32:
        return [f64, i32]
    if arr.dtype == f64:
        return [f32, i64]
    return [f32, i64 if arr.dtype == i32 else i32]      # int32 / int64 arguments


@pytest.mark.parametrize("fn,arg", ARRAY_ARGS, ids=[f"{f}-{a}" for f, a in ARRAY_ARGS])
def test_wrong_dtype_is_type_error(fn, arg):
    args = BINDINGS[fn][1]()
    i = pos(fn, arg)
    for dt in wrong_dtypes(args[i]):
        bad = list(args)
        bad[i] = args[i].astype(dt)
        expect(fn, bad, TypeError, arg)


@pytest.mark.parametrize("fn,arg", ARRAY_ARGS, ids=[f"{f}-{a}" for f, a in ARRAY_ARGS])
def test_list_instead_of_array_is_type_error(fn, arg):
    args = BINDINGS[fn][1]()
    i = pos(fn, arg)
    args[i] = args[i].tolist()
    expect(fn, args, TypeError, arg)


def strided(a):
    """Same shape and dtype, every other element of the last axis of a bigger array."""
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    v = big[..., ::2]
    v[...] = a
    return v


def transposed(a):
    """Same shape and dtype, Fortran order (a transposed view)."""
    return np.ascontiguousarray(a.T).T


@pytest.mark.parametrize("fn,arg", ARRAY_ARGS, ids=[f"{f}-{a}" for f, a in ARRAY_ARGS])
def test_non_contiguous_is_value_error(fn, arg):
    args = BINDINGS[fn][1]()
    i = pos(fn, arg)
    views = [strided(args[i])] + ([transposed(args[i])] if args[i].ndim > 1 else [])
    for v in views:
        assert not v.flags.c_contiguous
        bad = list(args)
        bad[i] = v
        expect(fn, bad, ValueError, arg)


def swapped(a):
    """Same values, the other byte order (big-endian on x86)."""
    return a.astype(a.dtype.newbyteorder())


@pytest.mark.parametrize("fn,arg", ARRAY_ARGS, ids=[f"{f}-{a}" for f, a in ARRAY_ARGS])
def test_non_native_byte_order_is_type_error(fn, arg):
    args = BINDINGS[fn][1]()
    i = pos(fn, arg)
    args[i] = swapped(args[i])
    assert not args[i].dtype.isnative
    with pytest.raises(TypeError, match=rf"^{fn}: argument '{arg}' must have dtype .*non-native "
                                        r"byte order"):
        call(fn, args)


# More bindings, every array argument: name -> [(argument name or None for a scalar, value)]
def _conv_args():
    return [("dinp", z((2, 3, 6, 6))), ("dweight", z((4, 3, 3, 3))), ("dbias", z(4)),
            ("dout", z((2, 4, 6, 6))), ("inp", z((2, 3, 6, 6))), ("weight", z((4, 3, 3, 3)))] + \
           [(None, 1)] * 7


NAMED_ARGS = {
    "conv2d_forward_naive": lambda: [("out", z((2, 4, 6, 6))), ("inp", z((2, 3, 6, 6))),
                                     ("weight", z((4, 3, 3, 3))), ("bias", z(4))] + [(None, 1)] * 7,
    "conv2d_backward_naive": _conv_args,
    "batchnorm_forward_eval": lambda: [("out", z((2, 3, 4, 4))), ("inp", z((2, 3, 4, 4))),
                                       ("gamma", z(3)), ("beta", z(3)), ("running_mean", z(3)),
                                       ("running_var", np.ones(3, f32)), (None, 1e-5)],
    "batchnorm_backward": lambda: [("dinp", z((2, 3, 4, 4))), ("dgamma", z(3)), ("dbeta", z(3)),
                                   ("dout", z((2, 3, 4, 4))), ("inp", z((2, 3, 4, 4))),
                                   ("mean", z(3)), ("invstd", np.ones(3, f32)), ("gamma", z(3)),
                                   (None, True)],
    "relu_forward": lambda: [("out", z(5)), ("inp", z(5)), (None, 6.0)],
    "relu_backward": lambda: [("dinp", z(5)), ("dout", z(5)), ("out", z(5))],
    "add_forward": lambda: [("out", z((2, 3))), ("a", z((2, 3))), ("b", z((2, 3)))],
    "add_backward": lambda: [("dinp", z(4)), ("dout", z(4))],
    "dropout_forward": lambda: [("out", z(4)), ("mask", z(4)), ("inp", z(4)), (None, 0.5), (None, 1)],
    "dropout_backward": lambda: [("dinp", z(4)), ("dout", z(4)), ("mask", z(4))],
    "maxpool2d_backward": lambda: [("dinp", z((1, 2, 4, 4))), ("dout", z((1, 2, 2, 2))),
                                   ("argmax", np.zeros((1, 2, 2, 2), i32))],
    "avgpool_global_forward": lambda: [("out", z((2, 3))), ("inp", z((2, 3, 4, 4)))],
    "avgpool_global_backward": lambda: [("dinp", z((2, 3, 4, 4))), ("dout", z((2, 3)))],
    "linear_backward": lambda: [("dinp", z((2, 5))), ("dweight", z((4, 5))), ("dbias", z(4)),
                                ("dout", z((2, 4))), ("inp", z((2, 5))), ("weight", z((4, 5)))],
    "crossentropy_backward": lambda: [("dlogits", z((3, 4))), ("probs", z((3, 4))),
                                      ("labels", np.array([0, 1, 3], i64)), (None, 0.0), (None, 1.0)],
    "kldiv_forward": lambda: [("losses", z(3)), ("pstudent", z((3, 4))), ("pteacher", z((3, 4))),
                              ("student", z((3, 4))), ("teacher", z((3, 4))), (None, 2.0)],
    "kldiv_backward": lambda: [("dstudent", z((3, 4))), ("pstudent", z((3, 4))),
                               ("pteacher", z((3, 4))), (None, 2.0), (None, 1.0)],
    "adam_step": lambda: [("param", z(6)), ("exp_avg", z(6)), ("exp_avg_sq", z(6)), ("grad", z(6)),
                          (None, 0.1), (None, 0.9), (None, 0.999), (None, 1e-8), (None, 0.0),
                          (None, 1)],
    "markov_probs_forward": lambda: [("P", z(4)), ("alpha", z(4)), (None, 0)],
    "markov_probs_backward": lambda: [("dalpha", z(4)), ("dP", z(4)), ("P", z(4)),
                                      ("alpha", z(4)), (None, 1)],
    "gate_backward": lambda: [("dinp", z((2, 7, 3, 3))), ("dP", z(3)), ("dout", z((2, 7, 3, 3))),
                              ("inp", z((2, 7, 3, 3))), ("P", np.full(3, 0.5, f32)), (None, 1),
                              (None, 2)],
    "flops_of_widths": lambda: [("widths", np.ones(2, f64)),
                                ("terms", np.array([[0, 1, 0, 0, 2.0]], f64)),
                                ("dwidths", np.zeros(2, f64))],
    "resize_crop": lambda: [("out", z((2, 2, 3))), ("inp", np.zeros((4, 4, 3), np.uint8)),
                            (None, 0), (None, 0), (None, 4), (None, 4)],
    "pack_chw": lambda: [("batch", z((2, 3, 2, 2))), (None, 1),
                         ("img", np.zeros((2, 2, 3), np.uint8)), ("mean", z(3)),
                         ("std", np.ones(3, f32)), (None, False)],
}
NAMED = [(fn, k) for fn, build in NAMED_ARGS.items()
         for k, (name, v) in enumerate(build()) if name is not None and v.dtype.itemsize > 1]


@pytest.mark.parametrize("fn,k", NAMED, ids=[f"{f}-{k}" for f, k in NAMED])
def test_every_array_argument_refuses_non_native_byte_order(fn, k):
    named = NAMED_ARGS[fn]()
    getattr(C, fn)(*[v for _, v in named])            # the native call is valid
    name, value = named[k]
    named[k] = (name, swapped(value))
    with pytest.raises(TypeError, match=rf"^{fn}: argument '{name}' must have dtype .*non-native "
                                        r"byte order"):
        getattr(C, fn)(*[v for _, v in named])


def test_byte_order_of_keyword_arrays():
    x = z((2, 4, 3, 3))
    for kw in ({"P": swapped(np.ones(4, f32))}, {"P": np.ones(4, f32), "dP": swapped(z(4))}):
        with pytest.raises(TypeError, match=rf"^batchnorm_backward: argument '{list(kw)[-1]}' "
                                            r".*non-native byte order"):
            C.batchnorm_backward(z(x.shape), None, None, x, x, z(4), np.ones(4, f32),
                                 np.ones(4, f32), True, beta=z(4), min_ch=0, group_size=1, **kw)


def test_relu_does_not_misread_big_endian_data():
    """The issue's example: big-endian input once ran as if native."""
    with pytest.raises(TypeError, match=r"^relu_forward: argument 'inp'"):
        C.relu_forward(np.zeros(4, f32), np.arange(4, dtype=">f4"))


def test_misaligned_is_value_error():
    buf = np.zeros(4 * 20 + 1, np.uint8)[1:].view(f32).reshape(4, 5)
    assert not buf.flags.aligned
    args = BINDINGS["linear_forward"][1]()
    args[2] = buf
    expect("linear_forward", args, ValueError, "weight")


# sgd_step accepts any ndim (flat updates), so a wrong ndim shows as a shape mismatch.
@pytest.mark.parametrize("fn,arg", ARRAY_ARGS, ids=[f"{f}-{a}" for f, a in ARRAY_ARGS])
def test_wrong_ndim_is_value_error(fn, arg):
    args = BINDINGS[fn][1]()
    i = pos(fn, arg)
    args[i] = args[i][None]
    expect(fn, args, ValueError, arg)


READONLY = [(fn, a) for fn, (_, _, w) in BINDINGS.items() for a in w]


@pytest.mark.parametrize("fn,arg", READONLY, ids=[f"{f}-{a}" for f, a in READONLY])
def test_read_only_output_is_value_error(fn, arg):
    args = BINDINGS[fn][1]()
    i = pos(fn, arg)
    args[i].setflags(write=False)
    expect(fn, args, ValueError, arg)


# (binding, argument to replace, replacement, argument the message must name)
MISMATCH = [
    ("conv2d_forward", "out", z((2, 4, 5, 6)), "out"),             # spatial size
    ("conv2d_forward", "out", z((3, 4, 6, 6)), "out"),             # batch
    ("conv2d_forward", "out", z((2, 5, 6, 6)), "out"),             # more channels than weight
    ("conv2d_forward", "inp", z((2, 5, 6, 6)), "inp"),             # more channels than weight
    ("conv2d_forward", "bias", z(3), "bias"),
    ("conv2d_backward", "dinp", z((2, 3, 6, 5)), "dinp"),
    ("conv2d_backward", "dweight", z((4, 3, 3, 2)), "dweight"),
    ("conv2d_backward", "dbias", z(2), "dbias"),
    ("conv2d_backward", "dout", z((2, 4, 6, 7)), "dout"),
    ("batchnorm_forward_train", "out", z((2, 3, 4, 5)), "out"),
    ("batchnorm_forward_train", "save_mean", z(4), "save_mean"),
    ("batchnorm_forward_train", "save_invstd", z(2), "save_invstd"),
    ("batchnorm_forward_train", "running_mean", z(2), "running_mean"),
    ("batchnorm_forward_train", "running_var", z(2), "running_var"),
    ("batchnorm_forward_train", "gamma", z(2), "gamma"),
    ("batchnorm_forward_train", "beta", z(1), "beta"),
    ("linear_forward", "out", z((3, 4)), "out"),
    ("linear_forward", "out", z((2, 5)), "weight"),                # more outputs than weight rows
    ("linear_forward", "inp", z((2, 6)), "weight"),                # more inputs than weight columns
    ("linear_forward", "bias", z(3), "bias"),
    ("maxpool2d_forward", "out", z((2, 3, 4, 5)), "out"),
    ("maxpool2d_forward", "argmax", z((2, 3, 4, 3), i32), "argmax"),
    ("crossentropy_forward", "probs", z((4, 6)), "probs"),
    ("crossentropy_forward", "losses", z(3), "losses"),
    ("crossentropy_forward", "labels", np.zeros(5, i64), "labels"),
    ("sgd_step", "grad", z((5, 3)), "grad"),
    ("sgd_step", "momentum_buffer", z(15), "momentum_buffer"),
    ("sgd_step", "momentum_buffer", None, "momentum_buffer"),      # momentum 0.9 needs a buffer
    ("gate_forward", "out", z((2, 7, 3, 2)), "out"),
    # 1 + 4*2 != 7 channels; the message names min_ch/group_size but no argument
    ("gate_forward", "P", np.full(4, 0.5, f32), "P"),
    ("gate_forward", "inp", z((2, 8, 3, 3)), "inp"),
    ("flops_expected", "units", z((3, 3), i32), "units"),
    ("flops_expected", "units", np.array([[0, 3, 2, 2], [3, 4, 4, 4], [7, 3, 1, 3]], i32), "units"),
    ("flops_expected", "terms", z((3, 4), f64), "terms"),
    ("flops_expected", "terms", np.array([[3, 0, 0, 0, 1.0]]), "terms"),   # unit 3 of 3
    ("flops_expected", "terms", np.array([[0, -2, 0, 0, 1.0]]), "terms"),
    ("flops_expected", "dalpha", z(8), "dalpha"),
]


@pytest.mark.parametrize("fn,arg,value,named", MISMATCH,
                         ids=[f"{m[0]}-{m[1]}-{k}" for k, m in enumerate(MISMATCH)])
def test_mismatched_shapes_are_value_errors(fn, arg, value, named):
    args = BINDINGS[fn][1]()
    args[pos(fn, arg)] = value
    expect(fn, args, ValueError, named)


# (binding, {argument: zero-size replacement}, argument the message must name)
ZERO_SIZE = [
    ("conv2d_forward", {"out": z((0, 4, 6, 6)), "inp": z((0, 3, 6, 6))}, "inp"),
    ("conv2d_forward", {"inp": z((2, 0, 6, 6)), "weight": z((4, 0, 3, 3))}, "inp"),
    ("conv2d_forward", {"out": z((2, 4, 0, 6)), "inp": z((2, 3, 0, 6))}, "inp"),
    ("conv2d_forward", {"out": z((2, 0, 6, 6)), "weight": z((0, 3, 3, 3)), "bias": z(0)}, "out"),
    ("conv2d_forward", {"weight": z((4, 3, 0, 3))}, "weight"),
    ("conv2d_backward", {"dinp": z((0, 3, 6, 6)), "dout": z((0, 4, 6, 6)), "inp": z((0, 3, 6, 6))}, "inp"),
    ("batchnorm_forward_train", {"out": z((0, 3, 4, 4)), "inp": z((0, 3, 4, 4))}, "inp"),
    ("batchnorm_forward_train", {"out": z((2, 3, 0, 4)), "inp": z((2, 3, 0, 4))}, "inp"),
    # no channels: currently accepted as a silent no-op (binding gap)
    ("batchnorm_forward_train", {"out": z((2, 0, 4, 4)), "inp": z((2, 0, 4, 4)),
                                 "save_mean": z(0), "save_invstd": z(0)}, "inp"),
    ("linear_forward", {"out": z((0, 4)), "inp": z((0, 5))}, "inp"),
    ("linear_forward", {"inp": z((2, 0))}, "inp"),
    ("maxpool2d_forward", {"out": z((0, 3, 4, 4)), "argmax": z((0, 3, 4, 4), i32),
                           "inp": z((0, 3, 8, 8))}, "inp"),
    ("maxpool2d_forward", {"out": z((2, 0, 4, 4)), "argmax": z((2, 0, 4, 4), i32),
                           "inp": z((2, 0, 8, 8))}, "inp"),
    ("crossentropy_forward", {"losses": z(0), "probs": z((0, 5)), "logits": z((0, 5)),
                              "labels": z(0, i64)}, "logits"),
    ("crossentropy_forward", {"probs": z((4, 0)), "logits": z((4, 0))}, "logits"),
    # empty batch / plane: currently accepted as a silent no-op (binding gap)
    ("gate_forward", {"out": z((0, 7, 3, 3)), "inp": z((0, 7, 3, 3))}, "inp"),
    ("gate_forward", {"out": z((2, 7, 0, 3)), "inp": z((2, 7, 0, 3))}, "inp"),
    ("flops_expected", {"alpha": z(0), "dalpha": z(0)}, "units"),      # units need 9 alphas
]


@pytest.mark.parametrize("fn,repl,named", ZERO_SIZE,
                         ids=[f"{m[0]}-{'-'.join(m[1])}-{k}" for k, m in enumerate(ZERO_SIZE)])
def test_zero_size_is_value_error(fn, repl, named):
    args = BINDINGS[fn][1]()
    for arg, value in repl.items():
        args[pos(fn, arg)] = value
    expect(fn, args, ValueError, named)


@pytest.mark.parametrize("labels", [[0, 5, 2, 1], [0, 1, -1, 2], [2**40, 0, 0, 0]])
def test_labels_out_of_range_are_value_errors(labels):
    args = BINDINGS["crossentropy_forward"][1]()
    args[3] = np.array(labels, i64)
    expect("crossentropy_forward", args, ValueError, "labels")
    probs = z((4, 5))
    with pytest.raises(ValueError, match=r"^crossentropy_backward: .*'labels'"):
        C.crossentropy_backward(z((4, 5)), probs, np.array(labels, i64), 0.0, 1.0)


def test_bad_scalars_are_value_errors():
    args = BINDINGS["conv2d_forward"][1]()
    with pytest.raises(ValueError, match=r"^conv2d_forward: .*stride"):
        C.conv2d_forward(*args[:4], 0, 1, 1, 1, 1, 1, 1)
    with pytest.raises(ValueError, match=r"^conv2d_forward: .*groups"):
        C.conv2d_forward(*args[:4], 1, 1, 1, 1, 1, 1, 2)        # 3 channels, 2 groups
    with pytest.raises(ValueError, match=r"^maxpool2d_forward: .*padding"):
        C.maxpool2d_forward(*BINDINGS["maxpool2d_forward"][1]()[:3], 2, 2, 2)
    with pytest.raises(ValueError, match=r"^batchnorm_forward_train: .*eps"):
        C.batchnorm_forward_train(*BINDINGS["batchnorm_forward_train"][1]()[:8], 0.1, 0.0)
    with pytest.raises(ValueError, match=r"^flops_expected: .*prob_type"):
        a = BINDINGS["flops_expected"][1]()
        C.flops_expected(a[0], a[1], a[2], 2)
    with pytest.raises(ValueError, match=r"^crossentropy_forward: .*smoothing"):
        a = BINDINGS["crossentropy_forward"][1]()
        C.crossentropy_forward(*a[:4], 1.5)
    with pytest.raises(TypeError):
        C.conv2d_forward(*args[:4], 1, 1, 1)                     # too few arguments


def test_dropout_p_message_shows_the_value():
    """PyErr_Format has no %g: the message must still show the bad p."""
    x = z(3)
    with pytest.raises(ValueError, match=r"^dropout_forward: p must be in \[0, 1\), got 1(\.0*)?\b"):
        C.dropout_forward(z(3), z(3), x, 1.0, 0)


def test_grouped_conv_cannot_be_channel_sliced():
    """Slicing is for groups == 1 and depthwise; a sliced grouped conv is rejected."""
    with pytest.raises(ValueError, match=r"^conv2d_forward: .*groups=2.*'out'"):
        C.conv2d_forward(z((1, 2, 4, 4)), z((1, 4, 4, 4)), z((4, 2, 3, 3)), None, 1, 1, 1, 1, 1, 1, 2)


def test_maxpool_backward_rejects_bad_argmax():
    with pytest.raises(ValueError, match=r"^maxpool2d_backward: .*'argmax'"):
        C.maxpool2d_backward(z((1, 1, 2, 2)), z((1, 1, 1, 1)), np.full((1, 1, 1, 1), 4, i32))
    with pytest.raises(ValueError, match=r"^maxpool2d_backward: .*'argmax'"):
        C.maxpool2d_backward(z((1, 1, 2, 2)), z((1, 1, 1, 1)), np.full((1, 1, 1, 1), -1, i32))


# Inputs that crashed the extension: each runs in a subprocess, so a crash
# fails its test instead of killing the run.
CRASHERS = {
    "flops_expected_offset_overflow":
        "C.flops_expected(np.zeros(3, np.float32), np.array([[2**31 - 1, 3, 1, 1]], np.int32), "
        "np.array([[0, -1, 0, 1, 1.0]]), 0)",
    "flops_expected_ngroups_overflow":
        "C.flops_expected(np.zeros(3, np.float32), np.array([[1, 2**31 - 1, 1, 1]], np.int32), "
        "np.array([[0, -1, 0, 1, 1.0]]), 0)",
}


@pytest.mark.parametrize("name", list(CRASHERS))
def test_no_crash_on_overflowing_sizes(name):
    code = textwrap.dedent(f"""
        import numpy as np
        from dmcp import _C as C
        try:
            {CRASHERS[name]}
        except ValueError as e:
            print("ValueError", e)
        else:
            print("no error")
    """)
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, f"{name}: the process died (return code {proc.returncode})"
    assert proc.stdout.startswith("ValueError flops_expected: 'units'"), proc.stdout
