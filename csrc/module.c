/* module.c: the only file that talks to CPython and NumPy.
 *
 * Every binding checks its arguments (dtype, C-contiguity, alignment,
 * writability, ndim, every shape relation) and raises TypeError/ValueError
 * naming the function and the argument; then it releases the GIL and calls
 * the plain-C kernel, and turns a non-zero status into an exception. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "conv2d.h"
#include "batchnorm.h"
#include "activation.h"
#include "pool.h"
#include "linear.h"
#include "loss.h"
#include "optim.h"
#include "markov_gate.h"
#include "flops.h"
#include "isa.h"
#include "scratch.h"

/* ---------------------------------------------------------------- checks */

/* Returns obj as a float32 (or `type`) C-contiguous aligned array of `ndim`
 * dimensions (ndim < 0: any), or NULL with an exception naming fn/arg. */
static PyArrayObject *as_array(PyObject *obj, const char *fn, const char *arg,
                               int type, int ndim, int writable)
{
    if (!PyArray_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s: argument '%s' must be a numpy array, not %s",
                     fn, arg, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != type) {
        PyArray_Descr *want = PyArray_DescrFromType(type);
        PyObject *have = PyObject_Str((PyObject *)PyArray_DESCR(a));
        PyObject *wants = PyObject_Str((PyObject *)want);
        PyErr_Format(PyExc_TypeError, "%s: argument '%s' must have dtype %U, got %U",
                     fn, arg, wants, have);
        Py_XDECREF(have); Py_XDECREF(wants); Py_DECREF(want);
        return NULL;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a)) {
        PyErr_Format(PyExc_ValueError, "%s: argument '%s' must be C-contiguous and aligned "
                     "(use numpy.ascontiguousarray)", fn, arg);
        return NULL;
    }
    if (ndim >= 0 && PyArray_NDIM(a) != ndim) {
        PyErr_Format(PyExc_ValueError, "%s: argument '%s' must have %d dimensions, got %d",
                     fn, arg, ndim, PyArray_NDIM(a));
        return NULL;
    }
    if (writable && !PyArray_ISWRITEABLE(a)) {
        PyErr_Format(PyExc_ValueError, "%s: argument '%s' must be writeable", fn, arg);
        return NULL;
    }
    for (int i = 0; i < PyArray_NDIM(a); i++) {
        if (PyArray_DIM(a, i) > INT_MAX / 2) {
            PyErr_Format(PyExc_ValueError, "%s: argument '%s' dimension %d is too large",
                         fn, arg, i);
            return NULL;
        }
    }
    return a;
}

#define F32(obj, arg, nd, wr) as_array((obj), FN, (arg), NPY_FLOAT32, (nd), (wr))
/* Optional array: None gives NULL with *ok left at 1. */
static PyArrayObject *opt_array(PyObject *obj, const char *fn, const char *arg,
                                int ndim, int writable, int *ok)
{
    /* after one failure the rest are not checked: no check runs with an error pending */
    if (!*ok || obj == Py_None) return NULL;
    PyArrayObject *a = as_array(obj, fn, arg, NPY_FLOAT32, ndim, writable);
    if (!a) *ok = 0;
    return a;
}
#define OPT(obj, arg, nd, wr) opt_array((obj), FN, (arg), (nd), (wr), &ok)
#define DATA(a) ((a) ? (float *)PyArray_DATA(a) : NULL)
#define DIM(a, i) ((int)PyArray_DIM((a), (i)))

static PyObject *shape_str(PyArrayObject *a)
{
    PyObject *t = PyTuple_New(PyArray_NDIM(a));
    if (!t) return NULL;
    for (int i = 0; i < PyArray_NDIM(a); i++)
        PyTuple_SET_ITEM(t, i, PyLong_FromSsize_t(PyArray_DIM(a, i)));
    PyObject *s = PyObject_Str(t);
    Py_DECREF(t);
    return s;
}

static int same_shape(PyArrayObject *a, PyArrayObject *b, const char *fn,
                      const char *an, const char *bn)
{
    if (!a || !b) return 1;
    if (PyArray_NDIM(a) == PyArray_NDIM(b) &&
        memcmp(PyArray_DIMS(a), PyArray_DIMS(b), sizeof(npy_intp) * PyArray_NDIM(a)) == 0)
        return 1;
    PyObject *sa = shape_str(a), *sb = shape_str(b);
    if (sa && sb)
        PyErr_Format(PyExc_ValueError, "%s: argument '%s' has shape %U but '%s' has shape %U "
                     "(they must match)", fn, an, sa, bn, sb);
    Py_XDECREF(sa); Py_XDECREF(sb);
    return 0;
}

static int status_error(dmcp_status st, const char *fn)
{
    switch (st) {
    case DMCP_OK: return 0;
    case DMCP_ERR_NOMEM: PyErr_Format(PyExc_MemoryError, "%s: out of memory", fn); break;
    case DMCP_ERR_SHAPE: PyErr_Format(PyExc_ValueError, "%s: inconsistent sizes", fn); break;
    default: PyErr_Format(PyExc_ValueError, "%s: value out of range", fn); break;
    }
    return -1;
}

/* ---------------------------------------------------------------- scratch, allocator */

static PyObject *py_scratch_floats(PyObject *self, PyObject *noargs)
{
    return PyLong_FromSize_t(scratch_floats());
}

static PyObject *py_scratch_free(PyObject *self, PyObject *noargs)
{
    scratch_free();
    Py_RETURN_NONE;
}

static PyObject *py_keep_freed_memory(PyObject *self, PyObject *noargs)
{
    return PyBool_FromLong(keep_freed_memory());
}

/* ---------------------------------------------------------------- conv2d */

/* Builds and validates the conv shape from inp (N,c,H,W), weight
 * (OCf, Cg, KH, KW) and out (N,oc,OH,OW). */
static int conv_shape_from(conv_shape *s, const char *fn, PyArrayObject *inp, PyArrayObject *weight,
                           PyArrayObject *out, const char *out_name,
                           int sh, int sw, int ph, int pw, int dh, int dw, int groups)
{
    if (sh < 1 || sw < 1 || dh < 1 || dw < 1 || ph < 0 || pw < 0 || groups < 1) {
        PyErr_Format(PyExc_ValueError, "%s: stride and dilation must be >= 1, padding >= 0 and "
                     "groups >= 1 (got stride=(%d,%d) padding=(%d,%d) dilation=(%d,%d) groups=%d)",
                     fn, sh, sw, ph, pw, dh, dw, groups);
        return 0;
    }
    /* bounded so that every size the kernels derive (padded planes, phase
     * grids, dilated spans) stays far inside int */
    const int lim = 1 << 16;
    if (sh > lim || sw > lim || ph > lim || pw > lim || dh > lim || dw > lim) {
        PyErr_Format(PyExc_ValueError, "%s: stride, padding and dilation must be at most %d "
                     "(got stride=(%d,%d) padding=(%d,%d) dilation=(%d,%d))",
                     fn, lim, sh, sw, ph, pw, dh, dw);
        return 0;
    }
    memset(s, 0, sizeof(*s));
    s->n = DIM(inp, 0); s->c = DIM(inp, 1); s->h = DIM(inp, 2); s->w = DIM(inp, 3);
    s->oc = DIM(out, 1);
    s->kh = DIM(weight, 2); s->kw = DIM(weight, 3);
    s->sh = sh; s->sw = sw; s->ph = ph; s->pw = pw; s->dh = dh; s->dw = dw;
    s->groups = groups;
    s->w_cin_full = DIM(weight, 1);
    const int ocf = DIM(weight, 0);
    if (s->n < 1 || s->c < 1 || s->h < 1 || s->w < 1 || s->oc < 1 || s->kh < 1 || s->kw < 1) {
        PyErr_Format(PyExc_ValueError, "%s: zero-size input, output or weight (inp %dx%dx%dx%d, "
                     "%s channels %d, kernel %dx%d)", fn, s->n, s->c, s->h, s->w, out_name,
                     s->oc, s->kh, s->kw);
        return 0;
    }
    if (DIM(out, 0) != s->n) {
        PyErr_Format(PyExc_ValueError, "%s: '%s' batch %d differs from 'inp' batch %d",
                     fn, out_name, DIM(out, 0), s->n);
        return 0;
    }
    if (s->oc > ocf) {
        PyErr_Format(PyExc_ValueError, "%s: '%s' has %d channels but 'weight' only %d outputs",
                     fn, out_name, s->oc, ocf);
        return 0;
    }
    if (groups == 1) {
        if (s->c > s->w_cin_full) {
            PyErr_Format(PyExc_ValueError, "%s: 'inp' has %d channels but 'weight' only %d inputs",
                         fn, s->c, s->w_cin_full);
            return 0;
        }
    } else if (groups == s->c && s->w_cin_full == 1) {
        if (s->oc != s->c) {
            PyErr_Format(PyExc_ValueError, "%s: depthwise conv needs as many output channels as "
                         "input channels ('%s' %d, 'inp' %d)", fn, out_name, s->oc, s->c);
            return 0;
        }
    } else {
        if (s->c % groups || s->oc % groups || s->c / groups != s->w_cin_full || s->oc != ocf) {
            PyErr_Format(PyExc_ValueError, "%s: grouped conv (groups=%d) needs 'inp' channels %d "
                         "and '%s' channels %d divisible by groups and equal to the weight's "
                         "(%d, %d x groups)", fn, groups, s->c, out_name, s->oc, ocf, s->w_cin_full);
            return 0;
        }
    }
    if (conv2d_shape_finish(s) != DMCP_OK) {
        PyErr_Format(PyExc_ValueError, "%s: kernel %dx%d (dilation %d,%d) does not fit input "
                     "%dx%d with padding %d,%d", fn, s->kh, s->kw, dh, dw, s->h, s->w, ph, pw);
        return 0;
    }
    if (DIM(out, 2) != s->oh || DIM(out, 3) != s->ow) {
        PyErr_Format(PyExc_ValueError, "%s: '%s' spatial size %dx%d, expected %dx%d",
                     fn, out_name, DIM(out, 2), DIM(out, 3), s->oh, s->ow);
        return 0;
    }
    return 1;
}

static int check_bias(PyArrayObject *b, const char *fn, const char *name, int oc)
{
    if (b && DIM(b, 0) < oc) {
        PyErr_Format(PyExc_ValueError, "%s: '%s' has %d entries, needs at least %d",
                     fn, name, DIM(b, 0), oc);
        return 0;
    }
    return 1;
}

static PyObject *conv_forward_impl(PyObject *args, const char *FN, int naive)
{
    PyObject *o_out, *o_inp, *o_w, *o_b;
    int sh, sw, ph, pw, dh, dw, groups, ok = 1;
    if (!PyArg_ParseTuple(args, "OOOOiiiiiii", &o_out, &o_inp, &o_w, &o_b,
                          &sh, &sw, &ph, &pw, &dh, &dw, &groups)) return NULL;
    PyArrayObject *out = F32(o_out, "out", 4, 1), *inp, *w, *b;
    if (!out || !(inp = F32(o_inp, "inp", 4, 0)) || !(w = F32(o_w, "weight", 4, 0))) return NULL;
    b = OPT(o_b, "bias", 1, 0);
    if (!ok) return NULL;
    conv_shape s;
    if (!conv_shape_from(&s, FN, inp, w, out, "out", sh, sw, ph, pw, dh, dw, groups)) return NULL;
    if (!check_bias(b, FN, "bias", s.oc)) return NULL;
    dmcp_status st;
    Py_BEGIN_ALLOW_THREADS
    if (naive) {
        st = conv2d_forward_naive(DATA(out), DATA(inp), DATA(w), DATA(b), &s);
    } else {
        int got;
        float *scr = scratch_acquire(conv2d_scratch_floats(&s), &got);
        st = got ? conv2d_forward(DATA(out), DATA(inp), DATA(w), DATA(b), &s, scr)
                 : DMCP_ERR_NOMEM;
        scratch_release();
    }
    Py_END_ALLOW_THREADS
    if (status_error(st, FN)) return NULL;
    Py_RETURN_NONE;
}

static PyObject *conv_backward_impl(PyObject *args, const char *FN, int naive)
{
    PyObject *o_dinp, *o_dw, *o_db, *o_dout, *o_inp, *o_w;
    int sh, sw, ph, pw, dh, dw, groups, accumulate = 1, ok = 1;
    if (!PyArg_ParseTuple(args, "OOOOOOiiiiiii|p", &o_dinp, &o_dw, &o_db, &o_dout, &o_inp, &o_w,
                          &sh, &sw, &ph, &pw, &dh, &dw, &groups, &accumulate)) return NULL;
    PyArrayObject *dinp = OPT(o_dinp, "dinp", 4, 1);
    PyArrayObject *dwt = OPT(o_dw, "dweight", 4, 1);
    PyArrayObject *db = OPT(o_db, "dbias", 1, 1);
    if (!ok) return NULL;
    PyArrayObject *dout, *inp, *w;
    if (!(dout = F32(o_dout, "dout", 4, 0)) || !(inp = F32(o_inp, "inp", 4, 0)) ||
        !(w = F32(o_w, "weight", 4, 0))) return NULL;
    conv_shape s;
    if (!conv_shape_from(&s, FN, inp, w, dout, "dout", sh, sw, ph, pw, dh, dw, groups)) return NULL;
    if (!same_shape(dinp, inp, FN, "dinp", "inp") || !same_shape(dwt, w, FN, "dweight", "weight") ||
        !check_bias(db, FN, "dbias", s.oc)) return NULL;
    dmcp_status st;
    Py_BEGIN_ALLOW_THREADS
    if (dinp != NULL && !accumulate)   /* overwrite: zeroed here, on every thread */
        fill_zero(DATA(dinp), (size_t)PyArray_SIZE(dinp));
    if (naive) {
        st = conv2d_backward_naive(DATA(dinp), DATA(dwt), DATA(db), DATA(dout), DATA(inp),
                                   DATA(w), &s);
    } else {
        int got;
        float *scr = scratch_acquire(conv2d_scratch_floats(&s), &got);
        st = got ? conv2d_backward(DATA(dinp), DATA(dwt), DATA(db), DATA(dout), DATA(inp),
                                   DATA(w), &s, scr)
                 : DMCP_ERR_NOMEM;
        scratch_release();
    }
    Py_END_ALLOW_THREADS
    if (status_error(st, FN)) return NULL;
    Py_RETURN_NONE;
}

static PyObject *py_conv2d_forward(PyObject *self, PyObject *args)
{ return conv_forward_impl(args, "conv2d_forward", 0); }
static PyObject *py_conv2d_forward_naive(PyObject *self, PyObject *args)
{ return conv_forward_impl(args, "conv2d_forward_naive", 1); }
static PyObject *py_conv2d_backward(PyObject *self, PyObject *args)
{ return conv_backward_impl(args, "conv2d_backward", 0); }
static PyObject *py_conv2d_backward_naive(PyObject *self, PyObject *args)
{ return conv_backward_impl(args, "conv2d_backward_naive", 1); }

/* ---------------------------------------------------------------- ISA variants */

static int isa_of_name(PyObject *name, const char *fn)
{
    const char *s = PyUnicode_Check(name) ? PyUnicode_AsUTF8(name) : NULL;
    if (s == NULL) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s: the ISA must be a str ('base', 'avx2' or 'avx512')", fn);
        return -1;
    }
    for (int isa = 0; isa < DMCP_ISA_COUNT; isa++)
        if (strcmp(s, dmcp_isa_name(isa)) == 0)
            return isa;
    PyErr_Format(PyExc_ValueError, "%s: unknown ISA '%s' (base, avx2, avx512)", fn, s);
    return -1;
}

static PyObject *py_isa(PyObject *self, PyObject *noargs)
{
    return PyUnicode_FromString(dmcp_isa_name(dmcp_isa));
}

static PyObject *py_isa_available(PyObject *self, PyObject *noargs)
{
    PyObject *out = PyList_New(0);
    for (int isa = 0; out != NULL && isa < DMCP_ISA_COUNT; isa++) {
        if (!dmcp_isa_supported(isa))
            continue;
        PyObject *name = PyUnicode_FromString(dmcp_isa_name(isa));
        if (name == NULL || PyList_Append(out, name) < 0) {
            Py_XDECREF(name);
            Py_CLEAR(out);
            break;
        }
        Py_DECREF(name);
    }
    return out;
}

static PyObject *py_set_isa(PyObject *self, PyObject *arg)
{
    const int isa = isa_of_name(arg, "set_isa");
    if (isa < 0)
        return NULL;
    if (dmcp_isa_select(isa) != 0)
        return PyErr_Format(PyExc_ValueError, "set_isa: this CPU cannot run the '%s' kernels "
                            "(available: see isa_available())", dmcp_isa_name(isa));
    return PyUnicode_FromString(dmcp_isa_name(dmcp_isa));
}

/* ---------------------------------------------------------------- batchnorm */

static int check_vec(PyArrayObject *v, const char *fn, const char *name, int c)
{
    return check_bias(v, fn, name, c);
}

/* The keyword-only epilogue of the batchnorm calls: P (gate values, full unit
 * width), dP (backward), min_ch, group_size, act (None, 0 = ReLU, cap).
 * Fills *ep and returns it, NULL for plain BN, or sets *ok = 0 on an error. */
static const bn_epilogue *parse_epilogue(const char *fn, PyObject *o_P, PyObject *o_dP,
                                         int m, int g, PyObject *o_act, int c,
                                         bn_epilogue *ep, int *ok)
{
    *ep = (bn_epilogue){NULL, NULL, 0, 1, 0, -1.0f};
    if (o_act && o_act != Py_None) {
        const double act = PyFloat_AsDouble(o_act);
        if (act == -1.0 && PyErr_Occurred()) { *ok = 0; return NULL; }
        if (!(act >= 0.0)) {
            PyErr_Format(PyExc_ValueError, "%s: act must be None, 0 (ReLU) or a positive cap, "
                         "got %R", fn, o_act);
            *ok = 0;
            return NULL;
        }
        ep->act = (float)act;
    }
    PyArrayObject *P = o_P ? opt_array(o_P, fn, "P", 1, 0, ok) : NULL;
    PyArrayObject *dP = o_dP ? opt_array(o_dP, fn, "dP", 1, 1, ok) : NULL;
    if (!*ok) return NULL;
    if (dP && !P) {
        PyErr_Format(PyExc_ValueError, "%s: 'dP' needs 'P'", fn);
        *ok = 0;
        return NULL;
    }
    if (P) {
        const int ng = DIM(P, 0);
        if (m < 0 || g < 1 || (long)m + (long)ng * g != c) {
            PyErr_Format(PyExc_ValueError, "%s: argument 'inp' has %d channels but argument 'P' "
                         "describes min_ch %d + %d groups x group_size %d (gates run at full "
                         "width)", fn, c, m, ng, g);
            *ok = 0;
            return NULL;
        }
        if (!same_shape(dP, P, fn, "dP", "P")) { *ok = 0; return NULL; }
        ep->P = DATA(P); ep->dP = DATA(dP); ep->m = m; ep->g = g; ep->ngroups = ng;
    }
    return (P || ep->act >= 0.0f) ? ep : NULL;
}

static PyObject *py_batchnorm_forward_train(PyObject *self, PyObject *args, PyObject *kw)
{
    const char *FN = "batchnorm_forward_train";
    static char *kwlist[] = {"out", "save_mean", "save_invstd", "running_mean", "running_var",
                             "inp", "gamma", "beta", "momentum", "eps", "P", "min_ch",
                             "group_size", "act", NULL};
    PyObject *o_out, *o_sm, *o_si, *o_rm, *o_rv, *o_inp, *o_g, *o_b, *o_P = NULL, *o_act = NULL;
    float momentum, eps;
    int m = 0, gs = 1, ok = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOOOff|$OiiO", kwlist, &o_out, &o_sm, &o_si,
                                     &o_rm, &o_rv, &o_inp, &o_g, &o_b, &momentum, &eps, &o_P,
                                     &m, &gs, &o_act)) return NULL;
    PyArrayObject *out, *sm, *si, *rm, *rv, *inp, *g, *b;
    if (!(out = F32(o_out, "out", 4, 1)) || !(sm = F32(o_sm, "save_mean", 1, 1)) ||
        !(si = F32(o_si, "save_invstd", 1, 1)) || !(rm = F32(o_rm, "running_mean", 1, 1)) ||
        !(rv = F32(o_rv, "running_var", 1, 1)) || !(inp = F32(o_inp, "inp", 4, 0))) return NULL;
    g = OPT(o_g, "gamma", 1, 0);
    b = OPT(o_b, "beta", 1, 0);
    if (!ok || !same_shape(out, inp, FN, "out", "inp")) return NULL;
    const int n = DIM(inp, 0), c = DIM(inp, 1), hw = DIM(inp, 2) * DIM(inp, 3);
    if (c < 1) {
        PyErr_Format(PyExc_ValueError, "%s: argument 'inp' has no channels", FN);
        return NULL;
    }
    if ((long)n * hw < 2) {
        PyErr_Format(PyExc_ValueError, "%s: expected more than 1 value per channel when "
                     "training (inp shape %d,%d,%d,%d)", FN, n, c, DIM(inp, 2), DIM(inp, 3));
        return NULL;
    }
    if (DIM(sm, 0) != c || DIM(si, 0) != c) {
        PyErr_Format(PyExc_ValueError, "%s: 'save_mean'/'save_invstd' must have %d entries", FN, c);
        return NULL;
    }
    if (!check_vec(rm, FN, "running_mean", c) || !check_vec(rv, FN, "running_var", c) ||
        !check_vec(g, FN, "gamma", c) || !check_vec(b, FN, "beta", c)) return NULL;
    if (!(eps > 0.0f)) {
        PyErr_Format(PyExc_ValueError, "%s: eps must be > 0", FN);
        return NULL;
    }
    bn_epilogue epv;
    const bn_epilogue *ep = parse_epilogue(FN, o_P, NULL, m, gs, o_act, c, &epv, &ok);
    if (!ok) return NULL;
    dmcp_status st;
    Py_BEGIN_ALLOW_THREADS
    st = batchnorm_forward_train(DATA(out), DATA(sm), DATA(si), DATA(rm), DATA(rv), DATA(inp),
                                 DATA(g), DATA(b), n, c, hw, momentum, eps, ep);
    Py_END_ALLOW_THREADS
    if (status_error(st, FN)) return NULL;
    Py_RETURN_NONE;
}

static PyObject *py_batchnorm_forward_eval(PyObject *self, PyObject *args, PyObject *kw)
{
    const char *FN = "batchnorm_forward_eval";
    static char *kwlist[] = {"out", "inp", "gamma", "beta", "running_mean", "running_var", "eps",
                             "P", "min_ch", "group_size", "act", NULL};
    PyObject *o_out, *o_inp, *o_g, *o_b, *o_rm, *o_rv, *o_P = NULL, *o_act = NULL;
    float eps;
    int m = 0, gs = 1, ok = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOf|$OiiO", kwlist, &o_out, &o_inp, &o_g,
                                     &o_b, &o_rm, &o_rv, &eps, &o_P, &m, &gs, &o_act))
        return NULL;
    PyArrayObject *out, *inp, *g, *b, *rm, *rv;
    if (!(out = F32(o_out, "out", 4, 1)) || !(inp = F32(o_inp, "inp", 4, 0)) ||
        !(rm = F32(o_rm, "running_mean", 1, 0)) || !(rv = F32(o_rv, "running_var", 1, 0)))
        return NULL;
    g = OPT(o_g, "gamma", 1, 0);
    b = OPT(o_b, "beta", 1, 0);
    if (!ok || !same_shape(out, inp, FN, "out", "inp")) return NULL;
    const int n = DIM(inp, 0), c = DIM(inp, 1), hw = DIM(inp, 2) * DIM(inp, 3);
    if (!check_vec(rm, FN, "running_mean", c) || !check_vec(rv, FN, "running_var", c) ||
        !check_vec(g, FN, "gamma", c) || !check_vec(b, FN, "beta", c)) return NULL;
    bn_epilogue epv;
    const bn_epilogue *ep = parse_epilogue(FN, o_P, NULL, m, gs, o_act, c, &epv, &ok);
    if (!ok) return NULL;
    dmcp_status st;
    Py_BEGIN_ALLOW_THREADS
    st = batchnorm_forward_eval(DATA(out), DATA(inp), DATA(g), DATA(b), DATA(rm), DATA(rv),
                                n, c, hw, eps, ep);
    Py_END_ALLOW_THREADS
    if (status_error(st, FN)) return NULL;
    Py_RETURN_NONE;
}

static PyObject *py_batchnorm_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    const char *FN = "batchnorm_backward";
    static char *kwlist[] = {"dinp", "dgamma", "dbeta", "dout", "inp", "mean", "invstd", "gamma",
                             "train", "accumulate", "beta", "P", "dP", "min_ch", "group_size",
                             "act", NULL};
    PyObject *o_dinp, *o_dg, *o_db, *o_dout, *o_inp, *o_m, *o_is, *o_g;
    PyObject *o_b = Py_None, *o_P = NULL, *o_dP = NULL, *o_act = NULL;
    int train, accumulate = 1, m0 = 0, gs = 1, ok = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "OOOOOOOOp|p$OOOiiO", kwlist, &o_dinp, &o_dg,
                                     &o_db, &o_dout, &o_inp, &o_m, &o_is, &o_g, &train,
                                     &accumulate, &o_b, &o_P, &o_dP, &m0, &gs, &o_act))
        return NULL;
    PyArrayObject *dinp = OPT(o_dinp, "dinp", 4, 1), *dg = OPT(o_dg, "dgamma", 1, 1),
                  *db = OPT(o_db, "dbeta", 1, 1), *g = OPT(o_g, "gamma", 1, 0),
                  *b = OPT(o_b, "beta", 1, 0);
    if (!ok) return NULL;
    PyArrayObject *dout, *inp, *m, *is;
    if (!(dout = F32(o_dout, "dout", 4, 0)) || !(inp = F32(o_inp, "inp", 4, 0)) ||
        !(m = F32(o_m, "mean", 1, 0)) || !(is = F32(o_is, "invstd", 1, 0))) return NULL;
    if (!same_shape(dout, inp, FN, "dout", "inp") || !same_shape(dinp, inp, FN, "dinp", "inp"))
        return NULL;
    const int n = DIM(inp, 0), c = DIM(inp, 1), hw = DIM(inp, 2) * DIM(inp, 3);
    if (!check_vec(m, FN, "mean", c) || !check_vec(is, FN, "invstd", c) ||
        !check_vec(g, FN, "gamma", c) || !check_vec(b, FN, "beta", c) ||
        !check_vec(dg, FN, "dgamma", c) || !check_vec(db, FN, "dbeta", c)) return NULL;
    bn_epilogue epv;
    const bn_epilogue *ep = parse_epilogue(FN, o_P, o_dP, m0, gs, o_act, c, &epv, &ok);
    if (!ok) return NULL;
    dmcp_status st;
    Py_BEGIN_ALLOW_THREADS
    st = batchnorm_backward(DATA(dinp), DATA(dg), DATA(db), DATA(dout), DATA(inp), DATA(m),
                            DATA(is), DATA(g), DATA(b), n, c, hw, train, accumulate, ep);
    Py_END_ALLOW_THREADS
    if (status_error(st, FN)) return NULL;
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- elementwise */

static PyObject *py_relu_forward(PyObject *self, PyObject *args)
{
    const char *FN = "relu_forward";
    PyObject *o_out, *o_inp;
    float cap = 0.0f;
    if (!PyArg_ParseTuple(args, "OO|f", &o_out, &o_inp, &cap)) return NULL;
    PyArrayObject *out, *inp;
    if (!(out = F32(o_out, "out", -1, 1)) || !(inp = F32(o_inp, "inp", -1, 0))) return NULL;
    if (!same_shape(out, inp, FN, "out", "inp")) return NULL;
    size_t len = PyArray_SIZE(inp);
    Py_BEGIN_ALLOW_THREADS
    relu_forward(DATA(out), DATA(inp), len, cap);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_relu_backward(PyObject *self, PyObject *args)
{
    const char *FN = "relu_backward";
    PyObject *o_dinp, *o_dout, *o_out;
    float cap = 0.0f;
    int accumulate = 1;
    if (!PyArg_ParseTuple(args, "OOO|fp", &o_dinp, &o_dout, &o_out, &cap, &accumulate)) return NULL;
    PyArrayObject *dinp, *dout, *out;
    if (!(dinp = F32(o_dinp, "dinp", -1, 1)) || !(dout = F32(o_dout, "dout", -1, 0)) ||
        !(out = F32(o_out, "out", -1, 0))) return NULL;
    if (!same_shape(dinp, dout, FN, "dinp", "dout") || !same_shape(out, dout, FN, "out", "dout"))
        return NULL;
    size_t len = PyArray_SIZE(out);
    Py_BEGIN_ALLOW_THREADS
    relu_backward(DATA(dinp), DATA(dout), DATA(out), len, cap, accumulate);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_add_forward(PyObject *self, PyObject *args)
{
    const char *FN = "add_forward";
    PyObject *o_out, *o_a, *o_b;
    if (!PyArg_ParseTuple(args, "OOO", &o_out, &o_a, &o_b)) return NULL;
    PyArrayObject *out, *a, *b;
    if (!(out = F32(o_out, "out", -1, 1)) || !(a = F32(o_a, "a", -1, 0)) ||
        !(b = F32(o_b, "b", -1, 0))) return NULL;
    if (!same_shape(a, b, FN, "a", "b") || !same_shape(out, a, FN, "out", "a")) return NULL;
    size_t len = PyArray_SIZE(a);
    Py_BEGIN_ALLOW_THREADS
    add_forward(DATA(out), DATA(a), DATA(b), len);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_add_backward(PyObject *self, PyObject *args)
{
    const char *FN = "add_backward";
    PyObject *o_dinp, *o_dout;
    if (!PyArg_ParseTuple(args, "OO", &o_dinp, &o_dout)) return NULL;
    PyArrayObject *dinp, *dout;
    if (!(dinp = F32(o_dinp, "dinp", -1, 1)) || !(dout = F32(o_dout, "dout", -1, 0))) return NULL;
    if (!same_shape(dinp, dout, FN, "dinp", "dout")) return NULL;
    size_t len = PyArray_SIZE(dout);
    Py_BEGIN_ALLOW_THREADS
    add_backward(DATA(dinp), DATA(dout), len);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_dropout_forward(PyObject *self, PyObject *args)
{
    const char *FN = "dropout_forward";
    PyObject *o_out, *o_mask, *o_inp;
    float p;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "OOOfK", &o_out, &o_mask, &o_inp, &p, &seed)) return NULL;
    PyArrayObject *out, *mask, *inp;
    if (!(out = F32(o_out, "out", -1, 1)) || !(mask = F32(o_mask, "mask", -1, 1)) ||
        !(inp = F32(o_inp, "inp", -1, 0))) return NULL;
    if (!same_shape(out, inp, FN, "out", "inp") || !same_shape(mask, inp, FN, "mask", "inp"))
        return NULL;
    if (!(p >= 0.0f && p < 1.0f)) {
        PyObject *pv = PyFloat_FromDouble((double)p);
        if (pv) PyErr_Format(PyExc_ValueError, "%s: p must be in [0, 1), got %R", FN, pv);
        Py_XDECREF(pv);
        return NULL;
    }
    size_t len = PyArray_SIZE(inp);
    Py_BEGIN_ALLOW_THREADS
    dropout_forward(DATA(out), DATA(mask), DATA(inp), len, p, (uint64_t)seed);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_dropout_backward(PyObject *self, PyObject *args)
{
    const char *FN = "dropout_backward";
    PyObject *o_dinp, *o_dout, *o_mask;
    if (!PyArg_ParseTuple(args, "OOO", &o_dinp, &o_dout, &o_mask)) return NULL;
    PyArrayObject *dinp, *dout, *mask;
    if (!(dinp = F32(o_dinp, "dinp", -1, 1)) || !(dout = F32(o_dout, "dout", -1, 0)) ||
        !(mask = F32(o_mask, "mask", -1, 0))) return NULL;
    if (!same_shape(dinp, dout, FN, "dinp", "dout") || !same_shape(mask, dout, FN, "mask", "dout"))
        return NULL;
    size_t len = PyArray_SIZE(dout);
    Py_BEGIN_ALLOW_THREADS
    dropout_backward(DATA(dinp), DATA(dout), DATA(mask), len);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- pooling */

static PyObject *py_maxpool2d_forward(PyObject *self, PyObject *args)
{
    const char *FN = "maxpool2d_forward";
    PyObject *o_out, *o_am, *o_inp;
    int k, s, p;
    if (!PyArg_ParseTuple(args, "OOOiii", &o_out, &o_am, &o_inp, &k, &s, &p)) return NULL;
    PyArrayObject *out, *am, *inp;
    if (!(out = F32(o_out, "out", 4, 1)) ||
        !(am = as_array(o_am, FN, "argmax", NPY_INT32, 4, 1)) ||
        !(inp = F32(o_inp, "inp", 4, 0))) return NULL;
    if (!same_shape(am, out, FN, "argmax", "out")) return NULL;
    if (k < 1 || s < 1 || p < 0 || 2LL * p > k) {
        PyErr_Format(PyExc_ValueError, "%s: need kernel >= 1, stride >= 1, 0 <= padding <= "
                     "kernel/2 (got %d, %d, %d)", FN, k, s, p);
        return NULL;
    }
    const int n = DIM(inp, 0), c = DIM(inp, 1), h = DIM(inp, 2), w = DIM(inp, 3);
    const int oh = (h + 2 * p - k) / s + 1, ow = (w + 2 * p - k) / s + 1;
    if (n < 1 || c < 1 || h + 2 * p < k || w + 2 * p < k) {
        PyErr_Format(PyExc_ValueError, "%s: 'inp' of shape (%d,%d,%d,%d) is empty or smaller "
                     "than the kernel", FN, n, c, h, w);
        return NULL;
    }
    if (DIM(out, 0) != n || DIM(out, 1) != c || DIM(out, 2) != oh || DIM(out, 3) != ow) {
        PyErr_Format(PyExc_ValueError, "%s: 'out' must have shape (%d,%d,%d,%d)", FN, n, c, oh, ow);
        return NULL;
    }
    dmcp_status st;
    Py_BEGIN_ALLOW_THREADS
    st = maxpool2d_forward(DATA(out), (int32_t *)PyArray_DATA(am), DATA(inp), n, c, h, w, k, s, p,
                           oh, ow);
    Py_END_ALLOW_THREADS
    if (status_error(st, FN)) return NULL;
    Py_RETURN_NONE;
}

static PyObject *py_maxpool2d_backward(PyObject *self, PyObject *args)
{
    const char *FN = "maxpool2d_backward";
    PyObject *o_dinp, *o_dout, *o_am;
    if (!PyArg_ParseTuple(args, "OOO", &o_dinp, &o_dout, &o_am)) return NULL;
    PyArrayObject *dinp, *dout, *am;
    if (!(dinp = F32(o_dinp, "dinp", 4, 1)) || !(dout = F32(o_dout, "dout", 4, 0)) ||
        !(am = as_array(o_am, FN, "argmax", NPY_INT32, 4, 0))) return NULL;
    if (!same_shape(am, dout, FN, "argmax", "dout")) return NULL;
    if (DIM(dinp, 0) != DIM(dout, 0) || DIM(dinp, 1) != DIM(dout, 1)) {
        PyErr_Format(PyExc_ValueError, "%s: 'dinp' and 'dout' differ in batch or channels", FN);
        return NULL;
    }
    dmcp_status st;
    Py_BEGIN_ALLOW_THREADS
    st = maxpool2d_backward(DATA(dinp), DATA(dout), (const int32_t *)PyArray_DATA(am),
                            DIM(dinp, 0), DIM(dinp, 1), DIM(dinp, 2), DIM(dinp, 3),
                            DIM(dout, 2), DIM(dout, 3));
    Py_END_ALLOW_THREADS
    if (st != DMCP_OK) {
        PyErr_Format(PyExc_ValueError, "%s: 'argmax' holds an index outside the input plane", FN);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *py_avgpool_global_forward(PyObject *self, PyObject *args)
{
    const char *FN = "avgpool_global_forward";
    PyObject *o_out, *o_inp;
    if (!PyArg_ParseTuple(args, "OO", &o_out, &o_inp)) return NULL;
    PyArrayObject *out, *inp;
    if (!(out = F32(o_out, "out", 2, 1)) || !(inp = F32(o_inp, "inp", 4, 0))) return NULL;
    const int n = DIM(inp, 0), c = DIM(inp, 1), hw = DIM(inp, 2) * DIM(inp, 3);
    if (hw < 1 || DIM(out, 0) != n || DIM(out, 1) != c) {
        PyErr_Format(PyExc_ValueError, "%s: 'out' must have shape (%d,%d) and 'inp' a non-empty "
                     "plane", FN, n, c);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    avgpool_global_forward(DATA(out), DATA(inp), n, c, hw);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_avgpool_global_backward(PyObject *self, PyObject *args)
{
    const char *FN = "avgpool_global_backward";
    PyObject *o_dinp, *o_dout;
    if (!PyArg_ParseTuple(args, "OO", &o_dinp, &o_dout)) return NULL;
    PyArrayObject *dinp, *dout;
    if (!(dinp = F32(o_dinp, "dinp", 4, 1)) || !(dout = F32(o_dout, "dout", 2, 0))) return NULL;
    const int n = DIM(dinp, 0), c = DIM(dinp, 1), hw = DIM(dinp, 2) * DIM(dinp, 3);
    if (hw < 1 || DIM(dout, 0) != n || DIM(dout, 1) != c) {
        PyErr_Format(PyExc_ValueError, "%s: 'dout' must have shape (%d,%d)", FN, n, c);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    avgpool_global_backward(DATA(dinp), DATA(dout), n, c, hw);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- linear */

static int linear_check(const char *fn, PyArrayObject *inp, PyArrayObject *w, PyArrayObject *out,
                        const char *out_name, int *n, int *in_f, int *out_f)
{
    *n = DIM(inp, 0); *in_f = DIM(inp, 1); *out_f = DIM(out, 1);
    if (*n < 1 || *in_f < 1 || *out_f < 1) {
        PyErr_Format(PyExc_ValueError, "%s: zero-size 'inp' or '%s'", fn, out_name);
        return 0;
    }
    if (DIM(out, 0) != *n) {
        PyErr_Format(PyExc_ValueError, "%s: '%s' batch %d differs from 'inp' batch %d",
                     fn, out_name, DIM(out, 0), *n);
        return 0;
    }
    if (*in_f > DIM(w, 1) || *out_f > DIM(w, 0)) {
        PyErr_Format(PyExc_ValueError, "%s: 'weight' of shape (%d,%d) is smaller than "
                     "(%s features %d, inp features %d)", fn, DIM(w, 0), DIM(w, 1), out_name,
                     *out_f, *in_f);
        return 0;
    }
    return 1;
}

static PyObject *linear_forward_impl(PyObject *args, const char *FN, int naive)
{
    PyObject *o_out, *o_inp, *o_w, *o_b;
    int ok = 1, n, in_f, out_f;
    if (!PyArg_ParseTuple(args, "OOOO", &o_out, &o_inp, &o_w, &o_b)) return NULL;
    PyArrayObject *out, *inp, *w, *b;
    if (!(out = F32(o_out, "out", 2, 1)) || !(inp = F32(o_inp, "inp", 2, 0)) ||
        !(w = F32(o_w, "weight", 2, 0))) return NULL;
    b = OPT(o_b, "bias", 1, 0);
    if (!ok || !linear_check(FN, inp, w, out, "out", &n, &in_f, &out_f) ||
        !check_bias(b, FN, "bias", out_f)) return NULL;
    const int in_full = DIM(w, 1);
    Py_BEGIN_ALLOW_THREADS
    (naive ? linear_forward_naive : linear_forward)(DATA(out), DATA(inp), DATA(w), DATA(b),
                                                    n, in_f, out_f, in_full);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *linear_backward_impl(PyObject *args, const char *FN, int naive)
{
    PyObject *o_dinp, *o_dw, *o_db, *o_dout, *o_inp, *o_w;
    int ok = 1, n, in_f, out_f;
    if (!PyArg_ParseTuple(args, "OOOOOO", &o_dinp, &o_dw, &o_db, &o_dout, &o_inp, &o_w))
        return NULL;
    PyArrayObject *dinp = OPT(o_dinp, "dinp", 2, 1), *dw = OPT(o_dw, "dweight", 2, 1),
                  *db = OPT(o_db, "dbias", 1, 1);
    if (!ok) return NULL;
    PyArrayObject *dout, *inp, *w;
    if (!(dout = F32(o_dout, "dout", 2, 0)) || !(inp = F32(o_inp, "inp", 2, 0)) ||
        !(w = F32(o_w, "weight", 2, 0))) return NULL;
    if (!linear_check(FN, inp, w, dout, "dout", &n, &in_f, &out_f) ||
        !same_shape(dinp, inp, FN, "dinp", "inp") || !same_shape(dw, w, FN, "dweight", "weight") ||
        !check_bias(db, FN, "dbias", out_f)) return NULL;
    const int in_full = DIM(w, 1);
    Py_BEGIN_ALLOW_THREADS
    (naive ? linear_backward_naive : linear_backward)(DATA(dinp), DATA(dw), DATA(db), DATA(dout),
                                                      DATA(inp), DATA(w), n, in_f, out_f, in_full);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_linear_forward(PyObject *self, PyObject *args)
{ return linear_forward_impl(args, "linear_forward", 0); }
static PyObject *py_linear_forward_naive(PyObject *self, PyObject *args)
{ return linear_forward_impl(args, "linear_forward_naive", 1); }
static PyObject *py_linear_backward(PyObject *self, PyObject *args)
{ return linear_backward_impl(args, "linear_backward", 0); }
static PyObject *py_linear_backward_naive(PyObject *self, PyObject *args)
{ return linear_backward_impl(args, "linear_backward_naive", 1); }

/* ---------------------------------------------------------------- losses */

static int check_logits(const char *fn, PyArrayObject *a, const char *an, PyArrayObject *b,
                        const char *bn)
{
    if (DIM(a, 0) < 1 || DIM(a, 1) < 1) {
        PyErr_Format(PyExc_ValueError, "%s: '%s' is empty", fn, an);
        return 0;
    }
    return same_shape(a, b, fn, an, bn);
}

static int check_labels(const char *fn, PyArrayObject *labels, int n, int k)
{
    if (DIM(labels, 0) != n) {
        PyErr_Format(PyExc_ValueError, "%s: 'labels' has %d entries for a batch of %d",
                     fn, DIM(labels, 0), n);
        return 0;
    }
    const int64_t *l = (const int64_t *)PyArray_DATA(labels);
    for (int i = 0; i < n; i++) {
        if (l[i] < 0 || l[i] >= k) {
            PyErr_Format(PyExc_ValueError, "%s: 'labels'[%d] = %lld is outside [0, %d)",
                         fn, i, (long long)l[i], k);
            return 0;
        }
    }
    return 1;
}

static PyObject *py_crossentropy_forward(PyObject *self, PyObject *args)
{
    const char *FN = "crossentropy_forward";
    PyObject *o_loss, *o_p, *o_x, *o_l;
    float smoothing;
    if (!PyArg_ParseTuple(args, "OOOOf", &o_loss, &o_p, &o_x, &o_l, &smoothing)) return NULL;
    PyArrayObject *loss, *p, *x, *l;
    if (!(loss = F32(o_loss, "losses", 1, 1)) || !(p = F32(o_p, "probs", 2, 1)) ||
        !(x = F32(o_x, "logits", 2, 0)) || !(l = as_array(o_l, FN, "labels", NPY_INT64, 1, 0)))
        return NULL;
    if (!check_logits(FN, x, "logits", p, "probs")) return NULL;
    const int n = DIM(x, 0), k = DIM(x, 1);
    if (DIM(loss, 0) != n) {
        PyErr_Format(PyExc_ValueError, "%s: 'losses' must have %d entries", FN, n);
        return NULL;
    }
    if (!check_labels(FN, l, n, k)) return NULL;
    if (!(smoothing >= 0.0f && smoothing <= 1.0f)) {
        PyErr_Format(PyExc_ValueError, "%s: smoothing must be in [0, 1]", FN);
        return NULL;
    }
    dmcp_status st;
    Py_BEGIN_ALLOW_THREADS
    st = crossentropy_forward(DATA(loss), DATA(p), DATA(x), (const int64_t *)PyArray_DATA(l),
                              n, k, smoothing);
    Py_END_ALLOW_THREADS
    if (status_error(st, FN)) return NULL;
    Py_RETURN_NONE;
}

static PyObject *py_crossentropy_backward(PyObject *self, PyObject *args)
{
    const char *FN = "crossentropy_backward";
    PyObject *o_d, *o_p, *o_l;
    float smoothing, scale;
    if (!PyArg_ParseTuple(args, "OOOff", &o_d, &o_p, &o_l, &smoothing, &scale)) return NULL;
    PyArrayObject *d, *p, *l;
    if (!(d = F32(o_d, "dlogits", 2, 1)) || !(p = F32(o_p, "probs", 2, 0)) ||
        !(l = as_array(o_l, FN, "labels", NPY_INT64, 1, 0))) return NULL;
    if (!check_logits(FN, p, "probs", d, "dlogits") || !check_labels(FN, l, DIM(p, 0), DIM(p, 1)))
        return NULL;
    dmcp_status st;
    Py_BEGIN_ALLOW_THREADS
    st = crossentropy_backward(DATA(d), DATA(p), (const int64_t *)PyArray_DATA(l),
                               DIM(p, 0), DIM(p, 1), smoothing, scale);
    Py_END_ALLOW_THREADS
    if (status_error(st, FN)) return NULL;
    Py_RETURN_NONE;
}

static PyObject *py_kldiv_forward(PyObject *self, PyObject *args)
{
    const char *FN = "kldiv_forward";
    PyObject *o_loss, *o_ps, *o_pt, *o_s, *o_t;
    float tau;
    if (!PyArg_ParseTuple(args, "OOOOOf", &o_loss, &o_ps, &o_pt, &o_s, &o_t, &tau)) return NULL;
    PyArrayObject *loss, *ps, *pt, *s, *t;
    if (!(loss = F32(o_loss, "losses", 1, 1)) || !(ps = F32(o_ps, "pstudent", 2, 1)) ||
        !(pt = F32(o_pt, "pteacher", 2, 1)) || !(s = F32(o_s, "student", 2, 0)) ||
        !(t = F32(o_t, "teacher", 2, 0))) return NULL;
    if (!check_logits(FN, s, "student", t, "teacher") || !same_shape(ps, s, FN, "pstudent", "student")
        || !same_shape(pt, s, FN, "pteacher", "student")) return NULL;
    if (DIM(loss, 0) != DIM(s, 0)) {
        PyErr_Format(PyExc_ValueError, "%s: 'losses' must have %d entries", FN, DIM(s, 0));
        return NULL;
    }
    if (!(tau > 0.0f)) {
        PyErr_Format(PyExc_ValueError, "%s: tau must be > 0", FN);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    kldiv_forward(DATA(loss), DATA(ps), DATA(pt), DATA(s), DATA(t), DIM(s, 0), DIM(s, 1), tau);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_kldiv_backward(PyObject *self, PyObject *args)
{
    const char *FN = "kldiv_backward";
    PyObject *o_d, *o_ps, *o_pt;
    float tau, scale;
    if (!PyArg_ParseTuple(args, "OOOff", &o_d, &o_ps, &o_pt, &tau, &scale)) return NULL;
    PyArrayObject *d, *ps, *pt;
    if (!(d = F32(o_d, "dstudent", 2, 1)) || !(ps = F32(o_ps, "pstudent", 2, 0)) ||
        !(pt = F32(o_pt, "pteacher", 2, 0))) return NULL;
    if (!check_logits(FN, ps, "pstudent", pt, "pteacher") || !same_shape(d, ps, FN, "dstudent", "pstudent"))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    kldiv_backward(DATA(d), DATA(ps), DATA(pt), DIM(ps, 0), DIM(ps, 1), tau, scale);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- optimisers */

static PyObject *py_sgd_step(PyObject *self, PyObject *args)
{
    const char *FN = "sgd_step";
    PyObject *o_p, *o_buf, *o_g;
    float lr, momentum, dampening, wd;
    int nesterov, first, ok = 1;
    if (!PyArg_ParseTuple(args, "OOOffffpp", &o_p, &o_buf, &o_g, &lr, &momentum, &dampening,
                          &wd, &nesterov, &first)) return NULL;
    PyArrayObject *p, *g, *buf;
    if (!(p = F32(o_p, "param", -1, 1)) || !(g = F32(o_g, "grad", -1, 0))) return NULL;
    buf = OPT(o_buf, "momentum_buffer", -1, 1);
    if (!ok || !same_shape(g, p, FN, "grad", "param") ||
        !same_shape(buf, p, FN, "momentum_buffer", "param")) return NULL;
    if (momentum != 0.0f && !buf) {
        PyErr_Format(PyExc_ValueError, "%s: 'momentum_buffer' is required when momentum != 0", FN);
        return NULL;
    }
    size_t len = PyArray_SIZE(p);
    Py_BEGIN_ALLOW_THREADS
    sgd_step(DATA(p), DATA(buf), DATA(g), len, lr, momentum, dampening, wd, nesterov, first);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_adam_step(PyObject *self, PyObject *args)
{
    const char *FN = "adam_step";
    PyObject *o_p, *o_m, *o_v, *o_g;
    float lr, eps, wd;
    double b1, b2;
    long step;
    if (!PyArg_ParseTuple(args, "OOOOfddffl", &o_p, &o_m, &o_v, &o_g, &lr, &b1, &b2, &eps, &wd,
                          &step)) return NULL;
    PyArrayObject *p, *m, *v, *g;
    if (!(p = F32(o_p, "param", -1, 1)) || !(m = F32(o_m, "exp_avg", -1, 1)) ||
        !(v = F32(o_v, "exp_avg_sq", -1, 1)) || !(g = F32(o_g, "grad", -1, 0))) return NULL;
    if (!same_shape(g, p, FN, "grad", "param") || !same_shape(m, p, FN, "exp_avg", "param") ||
        !same_shape(v, p, FN, "exp_avg_sq", "param")) return NULL;
    if (step < 1) {
        PyErr_Format(PyExc_ValueError, "%s: step must be >= 1", FN);
        return NULL;
    }
    size_t len = PyArray_SIZE(p);
    Py_BEGIN_ALLOW_THREADS
    adam_step(DATA(p), DATA(m), DATA(v), DATA(g), len, lr, b1, b2, eps, wd, step);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- markov gates */

static int check_prob_type(const char *fn, int prob_type)
{
    if (prob_type != DMCP_PROB_SIGMOID && prob_type != DMCP_PROB_EXP) {
        PyErr_Format(PyExc_ValueError, "%s: prob_type must be 0 (sigmoid) or 1 (exp), got %d",
                     fn, prob_type);
        return 0;
    }
    return 1;
}

static PyObject *py_markov_probs_forward(PyObject *self, PyObject *args)
{
    const char *FN = "markov_probs_forward";
    PyObject *o_P, *o_a;
    int prob_type;
    if (!PyArg_ParseTuple(args, "OOi", &o_P, &o_a, &prob_type)) return NULL;
    PyArrayObject *P, *a;
    if (!(P = F32(o_P, "P", 1, 1)) || !(a = F32(o_a, "alpha", 1, 0))) return NULL;
    if (!same_shape(P, a, FN, "P", "alpha") || !check_prob_type(FN, prob_type)) return NULL;
    markov_probs_forward(DATA(P), DATA(a), DIM(a, 0), prob_type);
    Py_RETURN_NONE;
}

static PyObject *py_markov_probs_backward(PyObject *self, PyObject *args)
{
    const char *FN = "markov_probs_backward";
    PyObject *o_da, *o_dP, *o_P, *o_a;
    int prob_type;
    if (!PyArg_ParseTuple(args, "OOOOi", &o_da, &o_dP, &o_P, &o_a, &prob_type)) return NULL;
    PyArrayObject *da, *dP, *P, *a;
    if (!(da = F32(o_da, "dalpha", 1, 1)) || !(dP = F32(o_dP, "dP", 1, 0)) ||
        !(P = F32(o_P, "P", 1, 0)) || !(a = F32(o_a, "alpha", 1, 0))) return NULL;
    if (!same_shape(da, a, FN, "dalpha", "alpha") || !same_shape(dP, a, FN, "dP", "alpha") ||
        !same_shape(P, a, FN, "P", "alpha") || !check_prob_type(FN, prob_type)) return NULL;
    markov_probs_backward(DATA(da), DATA(dP), DATA(P), DATA(a), DIM(a, 0), prob_type);
    Py_RETURN_NONE;
}

static int gate_check(const char *fn, PyArrayObject *x, PyArrayObject *P, int m, int g,
                      int *n, int *c, int *hw)
{
    *n = DIM(x, 0); *c = DIM(x, 1); *hw = DIM(x, 2) * DIM(x, 3);
    const int ng = DIM(P, 0);
    if (*n < 1 || *c < 1 || *hw < 1) {
        PyErr_Format(PyExc_ValueError, "%s: argument 'inp' is empty (shape %d,%d,%d,%d)",
                     fn, *n, *c, DIM(x, 2), DIM(x, 3));
        return 0;
    }
    if (m < 0 || g < 1 || (long)m + (long)ng * g != *c) {
        PyErr_Format(PyExc_ValueError, "%s: argument 'inp' has %d channels but argument 'P' "
                     "describes min_ch %d + %d groups x group_size %d (gates run at full width)",
                     fn, *c, m, ng, g);
        return 0;
    }
    return 1;
}

static PyObject *py_gate_forward(PyObject *self, PyObject *args)
{
    const char *FN = "gate_forward";
    PyObject *o_out, *o_inp, *o_P;
    int m, g, n, c, hw;
    if (!PyArg_ParseTuple(args, "OOOii", &o_out, &o_inp, &o_P, &m, &g)) return NULL;
    PyArrayObject *out, *inp, *P;
    if (!(out = F32(o_out, "out", 4, 1)) || !(inp = F32(o_inp, "inp", 4, 0)) ||
        !(P = F32(o_P, "P", 1, 0))) return NULL;
    if (!same_shape(out, inp, FN, "out", "inp") || !gate_check(FN, inp, P, m, g, &n, &c, &hw))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    gate_forward(DATA(out), DATA(inp), DATA(P), n, c, hw, m, g, DIM(P, 0));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_gate_backward(PyObject *self, PyObject *args)
{
    const char *FN = "gate_backward";
    PyObject *o_dinp, *o_dP, *o_dout, *o_inp, *o_P;
    int m, g, n, c, hw, accumulate = 1, ok = 1;
    if (!PyArg_ParseTuple(args, "OOOOOii|p", &o_dinp, &o_dP, &o_dout, &o_inp, &o_P, &m, &g,
                          &accumulate))
        return NULL;
    PyArrayObject *dinp = OPT(o_dinp, "dinp", 4, 1), *dP = OPT(o_dP, "dP", 1, 1);
    if (!ok) return NULL;
    PyArrayObject *dout, *inp, *P;
    if (!(dout = F32(o_dout, "dout", 4, 0)) || !(inp = F32(o_inp, "inp", 4, 0)) ||
        !(P = F32(o_P, "P", 1, 0))) return NULL;
    if (!same_shape(dout, inp, FN, "dout", "inp") || !same_shape(dinp, inp, FN, "dinp", "inp") ||
        !same_shape(dP, P, FN, "dP", "P") || !gate_check(FN, inp, P, m, g, &n, &c, &hw))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    gate_backward(DATA(dinp), DATA(dP), DATA(dout), DATA(inp), DATA(P), n, c, hw, m, g, DIM(P, 0),
                  accumulate);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- expected FLOPs */

/* terms: float64 (T, 5) rows [unit_a, unit_b, const_a, const_b, coef]; unit -1 = constant. */
static flops_term *terms_from(const char *fn, PyObject *o_terms, int nunits, int *nterms)
{
    PyArrayObject *t = as_array(o_terms, fn, "terms", NPY_FLOAT64, 2, 0);
    if (!t) return NULL;
    if (DIM(t, 1) != 5) {
        PyErr_Format(PyExc_ValueError, "%s: 'terms' must have 5 columns "
                     "[unit_a, unit_b, const_a, const_b, coef], got %d", fn, DIM(t, 1));
        return NULL;
    }
    *nterms = DIM(t, 0);
    flops_term *out = PyMem_Malloc(sizeof(flops_term) * (*nterms > 0 ? *nterms : 1));
    if (!out) { PyErr_NoMemory(); return NULL; }
    const double *d = (const double *)PyArray_DATA(t);
    for (int i = 0; i < *nterms; i++) {
        const double *r = d + (size_t)i * 5;
        out[i].unit_a = (int)r[0]; out[i].unit_b = (int)r[1];
        out[i].const_a = r[2]; out[i].const_b = r[3]; out[i].coef = r[4];
        if (out[i].unit_a < -1 || out[i].unit_a >= nunits || out[i].unit_b < -1 ||
            out[i].unit_b >= nunits || r[0] != (double)out[i].unit_a || r[1] != (double)out[i].unit_b) {
            PyErr_Format(PyExc_ValueError, "%s: 'terms' row %d names a unit outside [-1, %d)",
                         fn, i, nunits);
            PyMem_Free(out);
            return NULL;
        }
    }
    return out;
}

static PyObject *py_flops_of_widths(PyObject *self, PyObject *args)
{
    const char *FN = "flops_of_widths";
    PyObject *o_w, *o_terms, *o_dw = Py_None;
    if (!PyArg_ParseTuple(args, "OO|O", &o_w, &o_terms, &o_dw)) return NULL;
    PyArrayObject *w = as_array(o_w, FN, "widths", NPY_FLOAT64, 1, 0), *dw = NULL;
    if (!w) return NULL;
    if (o_dw != Py_None) {
        if (!(dw = as_array(o_dw, FN, "dwidths", NPY_FLOAT64, 1, 1))) return NULL;
        if (!same_shape(dw, w, FN, "dwidths", "widths")) return NULL;
    }
    int nterms;
    flops_term *terms = terms_from(FN, o_terms, DIM(w, 0), &nterms);
    if (!terms) return NULL;
    double f = flops_of_widths(dw ? (double *)PyArray_DATA(dw) : NULL,
                               (const double *)PyArray_DATA(w), DIM(w, 0), terms, nterms);
    PyMem_Free(terms);
    return PyFloat_FromDouble(f);
}

/* flops_expected(alpha, units_int32 (U,4), terms (T,5), prob_type, dalpha=None, scale=1.0) -> float */
static PyObject *py_flops_expected(PyObject *self, PyObject *args)
{
    const char *FN = "flops_expected";
    PyObject *o_a, *o_u, *o_t, *o_da = Py_None;
    int prob_type;
    double scale = 1.0;
    if (!PyArg_ParseTuple(args, "OOOi|Od", &o_a, &o_u, &o_t, &prob_type, &o_da, &scale))
        return NULL;
    PyArrayObject *a = F32(o_a, "alpha", 1, 0), *u, *da = NULL;
    if (!a || !(u = as_array(o_u, FN, "units", NPY_INT32, 2, 0))) return NULL;
    if (o_da != Py_None) {
        if (!(da = F32(o_da, "dalpha", 1, 1)) || !same_shape(da, a, FN, "dalpha", "alpha"))
            return NULL;
    }
    if (!check_prob_type(FN, prob_type)) return NULL;
    if (DIM(u, 1) != 4) {
        PyErr_Format(PyExc_ValueError, "%s: 'units' must have 4 columns "
                     "[offset, ngroups, min_ch, group_size], got %d", FN, DIM(u, 1));
        return NULL;
    }
    const int nunits = DIM(u, 0), nalpha = DIM(a, 0);
    const flops_unit *units = (const flops_unit *)PyArray_DATA(u);
    for (int i = 0; i < nunits; i++) {
        const flops_unit *U = units + i;
        if (U->offset < 0 || U->ngroups < 0 || (long long)U->offset + U->ngroups > nalpha ||
            U->min_ch < 0 || U->group_size < 0) {
            PyErr_Format(PyExc_ValueError, "%s: 'units' row %d (offset %d, ngroups %d, min %d, "
                         "group %d) does not fit %d alphas", FN, i, U->offset, U->ngroups,
                         U->min_ch, U->group_size, nalpha);
            return NULL;
        }
    }
    int nterms;
    flops_term *terms = terms_from(FN, o_t, nunits, &nterms);
    if (!terms) return NULL;
    void *work = PyMem_Malloc(flops_work_bytes(nalpha, nunits) + 16);
    if (!work) { PyMem_Free(terms); return PyErr_NoMemory(); }
    double f = 0.0;
    dmcp_status st = flops_expected(&f, da ? DATA(da) : NULL, DATA(a), units, nunits, terms, nterms,
                                    prob_type, scale, work);
    PyMem_Free(work);
    PyMem_Free(terms);
    if (status_error(st, FN)) return NULL;
    return PyFloat_FromDouble(f);
}

/* ---------------------------------------------------------------- image */

#include <math.h>
#include "image.h"

/* obj as a C-contiguous uint8 (H, W, C) image with no empty dimension. */
static PyArrayObject *u8_image(PyObject *obj, const char *fn, const char *arg, int writable)
{
    PyArrayObject *a = as_array(obj, fn, arg, NPY_UINT8, 3, writable);
    if (a && (DIM(a, 0) < 1 || DIM(a, 1) < 1 || DIM(a, 2) < 1)) {
        PyObject *s = shape_str(a);
        if (s) PyErr_Format(PyExc_ValueError, "%s: argument '%s' is an empty image (shape %U)",
                            fn, arg, s);
        Py_XDECREF(s);
        return NULL;
    }
    return a;
}

static void free_pixels(PyObject *capsule)
{
    free(PyCapsule_GetPointer(capsule, "dmcp.pixels"));
}

/* decode_image(data, name=None) -> uint8 (H, W, 3) RGB from JPEG or PNG bytes. */
static PyObject *py_decode_image(PyObject *self, PyObject *args)
{
    const char *FN = "decode_image";
    PyObject *o_data, *o_name = Py_None;
    if (!PyArg_ParseTuple(args, "O|O", &o_data, &o_name)) return NULL;
    if (PyUnicode_Check(o_data) || !PyObject_CheckBuffer(o_data)) {
        PyErr_Format(PyExc_TypeError, "%s: argument 'data' must be bytes (the file's contents), "
                     "not %s", FN, Py_TYPE(o_data)->tp_name);
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(o_data, &view, PyBUF_SIMPLE) < 0) return NULL;
    uint8_t *pix = NULL;
    int h = 0, w = 0;
    dmcp_status st;
    Py_BEGIN_ALLOW_THREADS
    st = image_decode(&pix, &h, &w, (const uint8_t *)view.buf, (size_t)view.len);
    Py_END_ALLOW_THREADS
    const Py_ssize_t nbytes = view.len;
    PyBuffer_Release(&view);
    if (st == DMCP_ERR_NOMEM) return PyErr_Format(PyExc_MemoryError, "%s: out of memory", FN);
    if (st != DMCP_OK) {
        if (o_name != Py_None)
            PyErr_Format(PyExc_ValueError, "%s: corrupt or unsupported image '%S'", FN, o_name);
        else
            PyErr_Format(PyExc_ValueError, "%s: corrupt or unsupported image (%zd bytes; JPEG "
                         "and PNG are supported)", FN, nbytes);
        return NULL;
    }
    npy_intp dims[3] = {h, w, 3};
    PyObject *arr = PyArray_SimpleNewFromData(3, dims, NPY_UINT8, pix);
    if (!arr) { free(pix); return NULL; }
    PyObject *cap = PyCapsule_New(pix, "dmcp.pixels", free_pixels);
    if (!cap) { Py_DECREF(arr); free(pix); return NULL; }
    if (PyArray_SetBaseObject((PyArrayObject *)arr, cap) < 0) { Py_DECREF(arr); return NULL; }
    return arr;
}

/* encode_jpeg(img uint8 (H, W, 3), quality=90) -> bytes */
static PyObject *py_encode_jpeg(PyObject *self, PyObject *args)
{
    const char *FN = "encode_jpeg";
    PyObject *o_img;
    int quality = 90;
    if (!PyArg_ParseTuple(args, "O|i", &o_img, &quality)) return NULL;
    PyArrayObject *img = u8_image(o_img, FN, "img", 0);
    if (!img) return NULL;
    if (DIM(img, 2) != 3) {
        PyErr_Format(PyExc_ValueError, "%s: argument 'img' must have 3 channels (RGB), got %d",
                     FN, DIM(img, 2));
        return NULL;
    }
    if (quality < 1 || quality > 100) {
        PyErr_Format(PyExc_ValueError, "%s: quality must be in 1..100, got %d", FN, quality);
        return NULL;
    }
    uint8_t *buf = NULL;
    size_t len = 0;
    dmcp_status st;
    Py_BEGIN_ALLOW_THREADS
    st = image_encode_jpeg(&buf, &len, (const uint8_t *)PyArray_DATA(img), DIM(img, 0),
                           DIM(img, 1), quality);
    Py_END_ALLOW_THREADS
    if (status_error(st, FN)) return NULL;
    PyObject *bytes = PyBytes_FromStringAndSize((const char *)buf, (Py_ssize_t)len);
    free(buf);
    return bytes;
}

/* resize_crop(out, inp, y, x, h, w, rh=out H, rw=out W, oy=0, ox=0):
 * crop (y, x, h, w) of inp (H, W, C) uint8, resized bilinearly to (rh, rw);
 * its window (oy, ox) of out's size goes to out (OH, OW, C) uint8 or float32. */
static PyObject *py_resize_crop(PyObject *self, PyObject *args)
{
    const char *FN = "resize_crop";
    PyObject *o_out, *o_inp;
    resize_geom g;
    g.rh = -1; g.rw = -1; g.oy = 0; g.ox = 0;
    if (!PyArg_ParseTuple(args, "OOiiii|iiii", &o_out, &o_inp, &g.crop_y, &g.crop_x,
                          &g.crop_h, &g.crop_w, &g.rh, &g.rw, &g.oy, &g.ox)) return NULL;
    PyArrayObject *inp = u8_image(o_inp, FN, "inp", 0), *out;
    if (!inp) return NULL;
    const int out_u8 = PyArray_Check(o_out) && PyArray_TYPE((PyArrayObject *)o_out) == NPY_UINT8;
    if (!(out = out_u8 ? u8_image(o_out, FN, "out", 1) : F32(o_out, "out", 3, 1))) return NULL;
    g.h = DIM(inp, 0); g.w = DIM(inp, 1); g.c = DIM(inp, 2);
    g.oh = DIM(out, 0); g.ow = DIM(out, 1);
    if (g.rh < 0) g.rh = g.oh;
    if (g.rw < 0) g.rw = g.ow;
    if (DIM(out, 2) != g.c) {
        PyErr_Format(PyExc_ValueError, "%s: 'out' has %d channels but 'inp' %d", FN,
                     DIM(out, 2), g.c);
        return NULL;
    }
    if (g.crop_h < 1 || g.crop_w < 1 || g.crop_y < 0 || g.crop_x < 0 ||
        (long long)g.crop_y + g.crop_h > g.h || (long long)g.crop_x + g.crop_w > g.w) {
        PyErr_Format(PyExc_ValueError, "%s: crop (y=%d, x=%d, h=%d, w=%d) is not inside the "
                     "%dx%d input", FN, g.crop_y, g.crop_x, g.crop_h, g.crop_w, g.h, g.w);
        return NULL;
    }
    if (g.rh < 1 || g.rw < 1 || g.oy < 0 || g.ox < 0 || (long long)g.oy + g.oh > g.rh ||
        (long long)g.ox + g.ow > g.rw) {
        PyErr_Format(PyExc_ValueError, "%s: window (oy=%d, ox=%d) of size %dx%d ('out') is not "
                     "inside the %dx%d resized crop", FN, g.oy, g.ox, g.oh, g.ow, g.rh, g.rw);
        return NULL;
    }
    dmcp_status st;
    Py_BEGIN_ALLOW_THREADS
    st = out_u8 ? image_resize_crop_u8((uint8_t *)PyArray_DATA(out),
                                       (const uint8_t *)PyArray_DATA(inp), &g)
                : image_resize_crop_f32(DATA(out), (const uint8_t *)PyArray_DATA(inp), &g);
    Py_END_ALLOW_THREADS
    if (status_error(st, FN)) return NULL;
    Py_RETURN_NONE;
}

/* flip_horizontal(img uint8 (H, W, C)), in place */
static PyObject *py_flip_horizontal(PyObject *self, PyObject *args)
{
    const char *FN = "flip_horizontal";
    PyObject *o_img;
    if (!PyArg_ParseTuple(args, "O", &o_img)) return NULL;
    PyArrayObject *img = u8_image(o_img, FN, "img", 1);
    if (!img) return NULL;
    Py_BEGIN_ALLOW_THREADS
    image_flip_horizontal((uint8_t *)PyArray_DATA(img), DIM(img, 0), DIM(img, 1), DIM(img, 2));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* color_jitter(img uint8 (H, W, 1|3), brightness, contrast, saturation, order="bcs"),
 * in place: the adjustments named by the letters of `order`, in that order. */
static PyObject *py_color_jitter(PyObject *self, PyObject *args)
{
    const char *FN = "color_jitter";
    PyObject *o_img;
    double f[3];
    const char *order = "bcs";
    if (!PyArg_ParseTuple(args, "Oddd|s", &o_img, &f[0], &f[1], &f[2], &order)) return NULL;
    PyArrayObject *img = u8_image(o_img, FN, "img", 1);
    if (!img) return NULL;
    const int c = DIM(img, 2);
    if (c != 1 && c != 3) {
        PyErr_Format(PyExc_ValueError, "%s: argument 'img' must have 1 or 3 channels, got %d",
                     FN, c);
        return NULL;
    }
    static const char *names[3] = {"brightness", "contrast", "saturation"};
    for (int i = 0; i < 3; i++)
        if (!isfinite(f[i]) || f[i] < 0.0) {
            PyErr_Format(PyExc_ValueError, "%s: %s factor must be finite and >= 0, got %R", FN,
                         names[i], PyTuple_GET_ITEM(args, 1 + i));
            return NULL;
        }
    int ops[3], nops = 0, seen = 0;
    for (const char *p = order; *p; p++) {
        const char *at = strchr("bcs", *p);
        if (!at || nops == 3 || (seen & (1 << (at - "bcs")))) {
            PyErr_Format(PyExc_ValueError, "%s: order must list each of 'b', 'c', 's' at most "
                         "once, got '%s'", FN, order);
            return NULL;
        }
        seen |= 1 << (at - "bcs");
        ops[nops++] = (int)(at - "bcs");
    }
    uint8_t *px = (uint8_t *)PyArray_DATA(img);
    const size_t npix = (size_t)DIM(img, 0) * DIM(img, 1);
    Py_BEGIN_ALLOW_THREADS
    for (int i = 0; i < nops; i++) {
        const double k = f[ops[i]];
        if (k == 1.0) continue;                    /* identity blend */
        if (ops[i] == 0) image_adjust_brightness(px, npix, c, k);
        else if (ops[i] == 1) image_adjust_contrast(px, npix, c, k);
        else image_adjust_saturation(px, npix, c, k);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* pack_chw(batch float32 (N, C, H, W), index, img uint8 (H, W, C), mean (C,), std (C,), swap):
 * batch[index] = (img with channels reversed if swap, as CHW - mean) / std. */
static PyObject *py_pack_chw(PyObject *self, PyObject *args)
{
    const char *FN = "pack_chw";
    PyObject *o_batch, *o_img, *o_mean, *o_std;
    int index, swap;
    if (!PyArg_ParseTuple(args, "OiOOOp", &o_batch, &index, &o_img, &o_mean, &o_std, &swap))
        return NULL;
    PyArrayObject *batch, *img, *mean, *std;
    if (!(batch = F32(o_batch, "batch", 4, 1)) || !(img = u8_image(o_img, FN, "img", 0)) ||
        !(mean = F32(o_mean, "mean", 1, 0)) || !(std = F32(o_std, "std", 1, 0))) return NULL;
    const int n = DIM(batch, 0), c = DIM(batch, 1), h = DIM(batch, 2), w = DIM(batch, 3);
    if (index < 0 || index >= n) {
        PyErr_Format(PyExc_ValueError, "%s: index %d outside the batch of %d", FN, index, n);
        return NULL;
    }
    if (DIM(img, 0) != h || DIM(img, 1) != w || DIM(img, 2) != c) {
        PyErr_Format(PyExc_ValueError, "%s: 'img' is %dx%dx%d (H, W, C) but the batch holds "
                     "%dx%dx%d images", FN, DIM(img, 0), DIM(img, 1), DIM(img, 2), h, w, c);
        return NULL;
    }
    if (DIM(mean, 0) != c || DIM(std, 0) != c) {
        PyErr_Format(PyExc_ValueError, "%s: 'mean' and 'std' must have %d entries (got %d, %d)",
                     FN, c, DIM(mean, 0), DIM(std, 0));
        return NULL;
    }
    const float *sd = DATA(std);
    for (int k = 0; k < c; k++)
        if (!(sd[k] > 0.0f) || !isfinite(sd[k])) {
            PyErr_Format(PyExc_ValueError, "%s: 'std' entries must be finite and > 0", FN);
            return NULL;
        }
    float *slot = DATA(batch) + (size_t)index * c * h * w;
    Py_BEGIN_ALLOW_THREADS
    image_pack_chw(slot, (const uint8_t *)PyArray_DATA(img), h, w, c, DATA(mean), sd, swap);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- module */

static PyMethodDef methods[] = {
    {"isa", py_isa, METH_NOARGS,
     "isa() -> str: the instruction set the conv, BN and activation kernels run with"},
    {"isa_available", py_isa_available, METH_NOARGS,
     "isa_available() -> list of str: the kernel variants this CPU can run, baseline first"},
    {"set_isa", py_set_isa, METH_O,
     "set_isa(name) -> str: run the kernels built for 'base', 'avx2' or 'avx512' (ValueError "
     "when the CPU lacks it); `import dmcp` picks the best, or DMCP_ISA"},
    {"conv2d_forward", py_conv2d_forward, METH_VARARGS,
     "conv2d_forward(out, inp, weight, bias, sh, sw, ph, pw, dh, dw, groups)"},
    {"conv2d_forward_naive", py_conv2d_forward_naive, METH_VARARGS, "direct-loop conv2d_forward"},
    {"conv2d_backward", py_conv2d_backward, METH_VARARGS,
     "conv2d_backward(dinp, dweight, dbias, dout, inp, weight, sh, sw, ph, pw, dh, dw, groups, "
     "accumulate=True); accumulates, or with accumulate False overwrites dinp"},
    {"conv2d_backward_naive", py_conv2d_backward_naive, METH_VARARGS, "direct-loop conv2d_backward"},
    {"keep_freed_memory", py_keep_freed_memory, METH_NOARGS,
     "keep_freed_memory() -> bool: glibc serves large blocks from the heap and keeps freed "
     "memory for reuse (no per-step page faults); called by `import dmcp` unless "
     "DMCP_KEEP_FREED_MEMORY=0"},
    {"batchnorm_forward_train", (PyCFunction)(void (*)(void))py_batchnorm_forward_train,
     METH_VARARGS | METH_KEYWORDS,
     "batchnorm_forward_train(out, save_mean, save_invstd, running_mean, running_var, inp, gamma, "
     "beta, momentum, eps, *, P=None, min_ch=0, group_size=1, act=None); with P the output's "
     "channel block k is scaled by P[k] (Markov gate), act 0 applies ReLU, act > 0 ReLU capped at act"},
    {"batchnorm_forward_eval", (PyCFunction)(void (*)(void))py_batchnorm_forward_eval,
     METH_VARARGS | METH_KEYWORDS,
     "batchnorm_forward_eval(out, inp, gamma, beta, running_mean, running_var, eps, *, P=None, "
     "min_ch=0, group_size=1, act=None)"},
    {"batchnorm_backward", (PyCFunction)(void (*)(void))py_batchnorm_backward,
     METH_VARARGS | METH_KEYWORDS,
     "batchnorm_backward(dinp, dgamma, dbeta, dout, inp, mean, invstd, gamma, train, "
     "accumulate=True, *, beta=None, P=None, dP=None, min_ch=0, group_size=1, act=None); "
     "backward through the forward's gate and activation; accumulates into dgamma, dbeta, dP "
     "and (accumulate=True) dinp"},
    {"relu_forward", py_relu_forward, METH_VARARGS, "relu_forward(out, inp, cap=0); cap 6 for ReLU6"},
    {"relu_backward", py_relu_backward, METH_VARARGS, "relu_backward(dinp, dout, out, cap=0, accumulate=True); accumulates "
     "(overwrites with accumulate=False)"},
    {"add_forward", py_add_forward, METH_VARARGS, "add_forward(out, a, b)"},
    {"add_backward", py_add_backward, METH_VARARGS, "add_backward(dinp, dout); accumulates"},
    {"dropout_forward", py_dropout_forward, METH_VARARGS, "dropout_forward(out, mask, inp, p, seed)"},
    {"dropout_backward", py_dropout_backward, METH_VARARGS, "dropout_backward(dinp, dout, mask)"},
    {"maxpool2d_forward", py_maxpool2d_forward, METH_VARARGS,
     "maxpool2d_forward(out, argmax_int32, inp, kernel, stride, padding)"},
    {"maxpool2d_backward", py_maxpool2d_backward, METH_VARARGS,
     "maxpool2d_backward(dinp, dout, argmax); accumulates"},
    {"avgpool_global_forward", py_avgpool_global_forward, METH_VARARGS, "avgpool_global_forward(out, inp)"},
    {"avgpool_global_backward", py_avgpool_global_backward, METH_VARARGS,
     "avgpool_global_backward(dinp, dout); accumulates"},
    {"linear_forward", py_linear_forward, METH_VARARGS, "linear_forward(out, inp, weight, bias)"},
    {"linear_forward_naive", py_linear_forward_naive, METH_VARARGS, "direct-loop linear_forward"},
    {"linear_backward", py_linear_backward, METH_VARARGS,
     "linear_backward(dinp, dweight, dbias, dout, inp, weight); accumulates"},
    {"linear_backward_naive", py_linear_backward_naive, METH_VARARGS, "direct-loop linear_backward"},
    {"crossentropy_forward", py_crossentropy_forward, METH_VARARGS,
     "crossentropy_forward(losses, probs, logits, labels_int64, smoothing)"},
    {"crossentropy_backward", py_crossentropy_backward, METH_VARARGS,
     "crossentropy_backward(dlogits, probs, labels, smoothing, scale); accumulates"},
    {"kldiv_forward", py_kldiv_forward, METH_VARARGS,
     "kldiv_forward(losses, pstudent, pteacher, student, teacher, tau)"},
    {"kldiv_backward", py_kldiv_backward, METH_VARARGS,
     "kldiv_backward(dstudent, pstudent, pteacher, tau, scale); accumulates"},
    {"sgd_step", py_sgd_step, METH_VARARGS,
     "sgd_step(param, momentum_buffer, grad, lr, momentum, dampening, weight_decay, nesterov, first)"},
    {"adam_step", py_adam_step, METH_VARARGS,
     "adam_step(param, exp_avg, exp_avg_sq, grad, lr, beta1, beta2, eps, weight_decay, step)"},
    {"scratch_floats", py_scratch_floats, METH_NOARGS, "floats held by the shared scratch buffer"},
    {"scratch_free", py_scratch_free, METH_NOARGS, "release the shared scratch buffer"},
    {"markov_probs_forward", py_markov_probs_forward, METH_VARARGS,
     "markov_probs_forward(P, alpha, prob_type): cumulative keep probabilities (0 sigmoid, 1 exp)"},
    {"markov_probs_backward", py_markov_probs_backward, METH_VARARGS,
     "markov_probs_backward(dalpha, dP, P, alpha, prob_type); accumulates"},
    {"gate_forward", py_gate_forward, METH_VARARGS, "gate_forward(out, inp, P, min_ch, group_size)"},
    {"gate_backward", py_gate_backward, METH_VARARGS,
     "gate_backward(dinp, dP, dout, inp, P, min_ch, group_size, accumulate=True); accumulates "
     "(dinp overwritten with accumulate=False)"},
    {"flops_of_widths", py_flops_of_widths, METH_VARARGS,
     "flops_of_widths(widths_f64, terms_f64 (T,5), dwidths=None) -> MACs"},
    {"flops_expected", py_flops_expected, METH_VARARGS,
     "flops_expected(alpha, units_i32 (U,4), terms (T,5), prob_type, dalpha=None, scale=1.0) -> MACs"},
    {"decode_image", py_decode_image, METH_VARARGS,
     "decode_image(data_bytes, name=None) -> uint8 (H, W, 3) RGB; JPEG or PNG"},
    {"encode_jpeg", py_encode_jpeg, METH_VARARGS,
     "encode_jpeg(img_u8 (H, W, 3), quality=90) -> bytes (baseline 4:2:0)"},
    {"resize_crop", py_resize_crop, METH_VARARGS,
     "resize_crop(out_u8_or_f32 (OH,OW,C), inp_u8 (H,W,C), y, x, h, w, rh=OH, rw=OW, oy=0, ox=0); "
     "bilinear (OpenCV INTER_LINEAR)"},
    {"flip_horizontal", py_flip_horizontal, METH_VARARGS, "flip_horizontal(img_u8 (H,W,C)); in place"},
    {"color_jitter", py_color_jitter, METH_VARARGS,
     "color_jitter(img_u8 (H,W,1|3), brightness, contrast, saturation, order='bcs'); in place, "
     "torchvision adjust_* semantics"},
    {"pack_chw", py_pack_chw, METH_VARARGS,
     "pack_chw(batch_f32 (N,C,H,W), index, img_u8 (H,W,C), mean (C,), std (C,), swap)"},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "_C", "dmcp C core: CNN kernels, Markov gates, expected FLOPs.", -1, methods
};

PyMODINIT_FUNC PyInit__C(void)
{
    import_array();
    dmcp_isa_select(dmcp_isa_best());
    return PyModule_Create(&moduledef);
}
