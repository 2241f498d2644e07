/* module.c: the only file that talks to CPython and NumPy.
 *
 * Every binding checks its arguments (dtype, byte order, C-contiguity,
 * alignment, writability, ndim, every shape relation) and raises
 * TypeError/ValueError naming the function and the argument; then it releases
 * the GIL and calls the plain-C kernel, and turns a non-zero status into an
 * exception.  Array arguments are declared as `arr_arg` specs and converted by
 * PyArg_Parse's O& (as NumPy's own converters are): parsing stops at the first
 * failure, so no check runs with an error pending. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
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
#include "image.h"
#include "isa.h"
#include "scratch.h"

/* ---------------------------------------------------------------- array arguments */

/* One array argument: what the binding asks for, and what the converter found. */
typedef struct {
    const char *fn, *name;     /* function and argument, for messages */
    int type;                  /* NumPy type number */
    int ndim;                  /* < 0: any */
    int flags;                 /* ARG_OUT: must be writeable; ARG_OPT: None allowed */
    PyArrayObject *a;          /* the checked array (borrowed), NULL for None or absent */
} arr_arg;

enum { ARG_OUT = 1, ARG_OPT = 2 };

/* Specs of the binding whose name is in FN: F32(out, 4, ARG_OUT), ARR(labels, NPY_INT64, 1, 0). */
#define ARR(name, type, ndim, flags) {FN, #name, (type), (ndim), (flags), NULL}
#define F32(name, ndim, flags) ARR(name, NPY_FLOAT32, ndim, flags)
/* The O& pair of PyArg_ParseTuple for spec x. */
#define A(x) to_array, &(x)
#define DATA(x) ((x).a ? (float *)PyArray_DATA((x).a) : NULL)
#define DATA_AS(T, x) ((x).a ? (T *)PyArray_DATA((x).a) : NULL)
#define DIM(x, i) ((int)PyArray_DIM((x).a, (i)))
/* Largest accepted dimension: sums and doubled sizes of dims stay inside int. */
#define DIM_MAX (INT_MAX / 2)

/* Sets exc with the formatted message and returns 0: a converter's or a check's failure. */
static int fail(PyObject *exc, const char *format, ...)
{
    va_list ap;
    va_start(ap, format);
    PyErr_FormatV(exc, format, ap);
    va_end(ap);
    return 0;
}

/* The shape as a tuple, for messages. */
static PyObject *shape_of(PyArrayObject *a)
{
    return PyArray_IntTupleFromIntp(PyArray_NDIM(a), PyArray_DIMS(a));
}

/* O& converter: obj checked against the arr_arg at `spec`; 1, or 0 with a
 * TypeError/ValueError naming the function and the argument. */
static int to_array(PyObject *obj, void *spec)
{
    arr_arg *x = spec;
    x->a = NULL;
    if (obj == Py_None && (x->flags & ARG_OPT))
        return 1;
    if (!PyArray_Check(obj))
        return fail(PyExc_TypeError, "%s: argument '%s' must be a numpy array, not %s",
                    x->fn, x->name, Py_TYPE(obj)->tp_name);
    PyArrayObject *a = (PyArrayObject *)obj;
    if (PyArray_TYPE(a) != x->type || !PyArray_ISNOTSWAPPED(a)) {
        PyArray_Descr *want = PyArray_DescrFromType(x->type);
        if (want == NULL)
            return 0;
        PyErr_Format(PyExc_TypeError, "%s: argument '%s' must have dtype %S, got %S%s",
                     x->fn, x->name, (PyObject *)want, (PyObject *)PyArray_DESCR(a),
                     PyArray_TYPE(a) == x->type ? " (non-native byte order)" : "");
        Py_DECREF(want);
        return 0;
    }
    if (!PyArray_IS_C_CONTIGUOUS(a) || !PyArray_ISALIGNED(a))
        return fail(PyExc_ValueError, "%s: argument '%s' must be C-contiguous and aligned "
                    "(use numpy.ascontiguousarray)", x->fn, x->name);
    if (x->ndim >= 0 && PyArray_NDIM(a) != x->ndim)
        return fail(PyExc_ValueError, "%s: argument '%s' must have %d dimensions, got %d",
                    x->fn, x->name, x->ndim, PyArray_NDIM(a));
    if ((x->flags & ARG_OUT) && !PyArray_ISWRITEABLE(a))
        return fail(PyExc_ValueError, "%s: argument '%s' must be writeable", x->fn, x->name);
    for (int i = 0; i < PyArray_NDIM(a); i++) {
        if (PyArray_DIM(a, i) > DIM_MAX)
            return fail(PyExc_ValueError, "%s: argument '%s' dimension %d is too large",
                        x->fn, x->name, i);
    }
    x->a = a;
    return 1;
}

/* O& converter for (H, W, C) images: to_array, and no empty dimension. */
static int to_image(PyObject *obj, void *spec)
{
    arr_arg *x = spec;
    if (!to_array(obj, x))
        return 0;
    if (x->a && (DIM(*x, 0) < 1 || DIM(*x, 1) < 1 || DIM(*x, 2) < 1)) {
        PyObject *shape = shape_of(x->a);
        if (shape)
            PyErr_Format(PyExc_ValueError, "%s: argument '%s' is an empty image (shape %S)",
                         x->fn, x->name, shape);
        Py_XDECREF(shape);
        return 0;
    }
    return 1;
}
#define IMG(name, flags) ARR(name, NPY_UINT8, 3, flags)

/* Whether a and b have one shape (true when either is absent); else a ValueError. */
static int same_shape(const arr_arg *a, const arr_arg *b)
{
    if (!a->a || !b->a)
        return 1;
    if (PyArray_NDIM(a->a) == PyArray_NDIM(b->a) &&
        PyArray_CompareLists(PyArray_DIMS(a->a), PyArray_DIMS(b->a), PyArray_NDIM(a->a)))
        return 1;
    PyObject *sa = shape_of(a->a), *sb = shape_of(b->a);
    if (sa && sb)
        PyErr_Format(PyExc_ValueError, "%s: argument '%s' has shape %S but '%s' has shape %S "
                     "(they must match)", a->fn, a->name, sa, b->name, sb);
    Py_XDECREF(sa);
    Py_XDECREF(sb);
    return 0;
}

/* Whether the 1-D v (true when absent) has at least n entries; else a ValueError. */
static int check_len(const arr_arg *v, int n)
{
    if (v->a && DIM(*v, 0) < n)
        return fail(PyExc_ValueError, "%s: '%s' has %d entries, needs at least %d",
                    v->fn, v->name, DIM(*v, 0), n);
    return 1;
}

/* H*W of the 4-D x, or -1 with a ValueError when the kernels' int cannot hold it. */
static int plane_size(const arr_arg *x)
{
    const int64_t hw = (int64_t)DIM(*x, 2) * DIM(*x, 3);
    if (hw > INT_MAX) {
        PyErr_Format(PyExc_ValueError, "%s: argument '%s' has %lld values per plane (%dx%d), "
                     "more than %d", x->fn, x->name, (long long)hw, DIM(*x, 2), DIM(*x, 3),
                     INT_MAX);
        return -1;
    }
    return (int)hw;
}

/* min_ch + (P's groups) x group_size must be the c channels of 'inp'. */
static int check_gate_width(const char *fn, int c, int m, int ngroups, int g)
{
    if (m < 0 || g < 1 || (int64_t)m + (int64_t)ngroups * g != c)
        return fail(PyExc_ValueError, "%s: argument 'inp' has %d channels but argument 'P' "
                    "describes min_ch %d + %d groups x group_size %d (gates run at full "
                    "width)", fn, c, m, ngroups, g);
    return 1;
}

/* Runs stmt without the GIL. */
#define NOGIL(stmt) do { Py_BEGIN_ALLOW_THREADS stmt; Py_END_ALLOW_THREADS } while (0)

/* None, or NULL with the exception for a kernel's status. */
static PyObject *done(dmcp_status st, const char *fn)
{
    switch (st) {
    case DMCP_OK: Py_RETURN_NONE;
    case DMCP_ERR_NOMEM: return PyErr_Format(PyExc_MemoryError, "%s: out of memory", fn);
    case DMCP_ERR_SHAPE: return PyErr_Format(PyExc_ValueError, "%s: inconsistent sizes", fn);
    default: return PyErr_Format(PyExc_ValueError, "%s: value out of range", fn);
    }
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
 * (OCf, Cg, KH, KW) and out (N,oc,OH,OW) (out: 'out' or 'dout'). */
static int conv_shape_from(conv_shape *s, const arr_arg *inp, const arr_arg *weight,
                           const arr_arg *out, const int geom[7])
{
    const char *fn = inp->fn, *out_name = out->name;
    const int sh = geom[0], sw = geom[1], ph = geom[2], pw = geom[3], dh = geom[4], dw = geom[5];
    const int groups = geom[6];
    if (sh < 1 || sw < 1 || dh < 1 || dw < 1 || ph < 0 || pw < 0 || groups < 1)
        return fail(PyExc_ValueError, "%s: stride and dilation must be >= 1, padding >= 0 and "
                    "groups >= 1 (got stride=(%d,%d) padding=(%d,%d) dilation=(%d,%d) groups=%d)",
                    fn, sh, sw, ph, pw, dh, dw, groups);
    /* bounded so that every size the kernels derive (padded planes, phase
     * grids, dilated spans) stays far inside int */
    const int lim = 1 << 16;
    if (sh > lim || sw > lim || ph > lim || pw > lim || dh > lim || dw > lim)
        return fail(PyExc_ValueError, "%s: stride, padding and dilation must be at most %d "
                    "(got stride=(%d,%d) padding=(%d,%d) dilation=(%d,%d))",
                    fn, lim, sh, sw, ph, pw, dh, dw);
    memset(s, 0, sizeof(*s));
    s->n = DIM(*inp, 0); s->c = DIM(*inp, 1); s->h = DIM(*inp, 2); s->w = DIM(*inp, 3);
    s->oc = DIM(*out, 1);
    s->kh = DIM(*weight, 2); s->kw = DIM(*weight, 3);
    s->sh = sh; s->sw = sw; s->ph = ph; s->pw = pw; s->dh = dh; s->dw = dw;
    s->groups = groups;
    s->w_cin_full = DIM(*weight, 1);
    const int ocf = DIM(*weight, 0);
    if (s->n < 1 || s->c < 1 || s->h < 1 || s->w < 1 || s->oc < 1 || s->kh < 1 || s->kw < 1)
        return fail(PyExc_ValueError, "%s: zero-size input, output or weight (inp %dx%dx%dx%d, "
                    "%s channels %d, kernel %dx%d)", fn, s->n, s->c, s->h, s->w, out_name,
                    s->oc, s->kh, s->kw);
    if (DIM(*out, 0) != s->n)
        return fail(PyExc_ValueError, "%s: '%s' batch %d differs from 'inp' batch %d",
                    fn, out_name, DIM(*out, 0), s->n);
    if (s->oc > ocf)
        return fail(PyExc_ValueError, "%s: '%s' has %d channels but 'weight' only %d outputs",
                    fn, out_name, s->oc, ocf);
    if (groups == 1) {
        if (s->c > s->w_cin_full)
            return fail(PyExc_ValueError, "%s: 'inp' has %d channels but 'weight' only %d inputs",
                        fn, s->c, s->w_cin_full);
    } else if (groups == s->c && s->w_cin_full == 1) {
        if (s->oc != s->c)
            return fail(PyExc_ValueError, "%s: depthwise conv needs as many output channels as "
                        "input channels ('%s' %d, 'inp' %d)", fn, out_name, s->oc, s->c);
    } else if (s->c % groups || s->oc % groups || s->c / groups != s->w_cin_full || s->oc != ocf) {
        return fail(PyExc_ValueError, "%s: grouped conv (groups=%d) needs 'inp' channels %d "
                    "and '%s' channels %d divisible by groups and equal to the weight's "
                    "(%d, %d x groups)", fn, groups, s->c, out_name, s->oc, ocf, s->w_cin_full);
    }
    if (conv2d_shape_finish(s) != DMCP_OK)
        return fail(PyExc_ValueError, "%s: kernel %dx%d (dilation %d,%d) does not fit input "
                    "%dx%d with padding %d,%d", fn, s->kh, s->kw, dh, dw, s->h, s->w, ph, pw);
    if (DIM(*out, 2) != s->oh || DIM(*out, 3) != s->ow)
        return fail(PyExc_ValueError, "%s: '%s' spatial size %dx%d, expected %dx%d",
                    fn, out_name, DIM(*out, 2), DIM(*out, 3), s->oh, s->ow);
    return 1;
}

static int parse_act(const char *fn, PyObject *o_act, float *act);

/* bias is the epilogue's shift: a conv bias, or with scale a folded eval-mode BN */
static PyObject *conv_forward_impl(PyObject *args, PyObject *kw, const char *FN, int naive)
{
    static char *kwlist[] = {"out", "inp", "weight", "bias", "sh", "sw", "ph", "pw", "dh", "dw",
                             "groups", "scale", "act", NULL};
    arr_arg out = F32(out, 4, ARG_OUT), inp = F32(inp, 4, 0), w = F32(weight, 4, 0),
            b = F32(bias, 1, ARG_OPT), sc = F32(scale, 1, ARG_OPT);
    PyObject *o_act = NULL;
    int g[7];
    conv_shape s;
    conv_epilogue ep;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&O&O&iiiiiii|$O&O", kwlist, A(out), A(inp),
                                     A(w), A(b), &g[0], &g[1], &g[2], &g[3], &g[4], &g[5], &g[6],
                                     A(sc), &o_act) ||
        !conv_shape_from(&s, &inp, &w, &out, g) || !check_len(&b, s.oc) ||
        !check_len(&sc, s.oc) || !parse_act(FN, o_act, &ep.act))
        return NULL;
    ep.scale = DATA(sc);
    ep.shift = DATA(b);
    dmcp_status st;
    Py_BEGIN_ALLOW_THREADS
    if (naive) {
        st = conv2d_forward_naive(DATA(out), DATA(inp), DATA(w), &ep, &s);
    } else {
        int got;
        float *scr = scratch_acquire(conv2d_scratch_floats(&s), &got);
        st = got ? conv2d_forward(DATA(out), DATA(inp), DATA(w), &ep, &s, scr)
                 : DMCP_ERR_NOMEM;
        scratch_release();
    }
    Py_END_ALLOW_THREADS
    return done(st, FN);
}

static PyObject *conv_backward_impl(PyObject *args, const char *FN, int naive)
{
    arr_arg dinp = F32(dinp, 4, ARG_OUT | ARG_OPT), dwt = F32(dweight, 4, ARG_OUT | ARG_OPT),
            db = F32(dbias, 1, ARG_OUT | ARG_OPT), dout = F32(dout, 4, 0), inp = F32(inp, 4, 0),
            w = F32(weight, 4, 0);
    int g[7], accumulate = 1;
    conv_shape s;
    if (!PyArg_ParseTuple(args, "O&O&O&O&O&O&iiiiiii|p", A(dinp), A(dwt), A(db), A(dout),
                          A(inp), A(w), &g[0], &g[1], &g[2], &g[3], &g[4], &g[5], &g[6],
                          &accumulate) ||
        !conv_shape_from(&s, &inp, &w, &dout, g) || !same_shape(&dinp, &inp) ||
        !same_shape(&dwt, &w) || !check_len(&db, s.oc))
        return NULL;
    dmcp_status st;
    Py_BEGIN_ALLOW_THREADS
    /* overwrite: the fast kernels write dinp; the naive ones add to zeros */
    if (naive && dinp.a != NULL && !accumulate)
        fill_zero(DATA(dinp), (size_t)PyArray_SIZE(dinp.a));
    if (naive) {
        st = conv2d_backward_naive(DATA(dinp), DATA(dwt), DATA(db), DATA(dout), DATA(inp),
                                   DATA(w), &s);
    } else {
        int got;
        float *scr = scratch_acquire(conv2d_scratch_floats(&s), &got);
        st = got ? conv2d_backward(DATA(dinp), DATA(dwt), DATA(db), DATA(dout), DATA(inp),
                                   DATA(w), &s, scr, !accumulate)
                 : DMCP_ERR_NOMEM;
        scratch_release();
    }
    Py_END_ALLOW_THREADS
    return done(st, FN);
}

static PyObject *py_conv2d_forward(PyObject *self, PyObject *args, PyObject *kw)
{ return conv_forward_impl(args, kw, "conv2d_forward", 0); }
static PyObject *py_conv2d_forward_naive(PyObject *self, PyObject *args, PyObject *kw)
{ return conv_forward_impl(args, kw, "conv2d_forward_naive", 1); }
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

/* The keyword-only epilogue of the batchnorm calls: P (gate values, full unit
 * width), dP (backward), min_ch, group_size, act (None, 0 = ReLU, cap).
 * Fills *ep and sets *use to it, or to NULL for plain BN; 0 on an error. */
/* An activation argument: None (or absent) -> -1 (none), 0 (ReLU) or a
 * positive cap; 0 on an error. */
static int parse_act(const char *fn, PyObject *o_act, float *act)
{
    *act = -1.0f;
    if (o_act && o_act != Py_None) {
        const double v = PyFloat_AsDouble(o_act);
        if (v == -1.0 && PyErr_Occurred())
            return 0;
        if (!(v >= 0.0))
            return fail(PyExc_ValueError, "%s: act must be None, 0 (ReLU) or a positive cap, "
                        "got %R", fn, o_act);
        *act = (float)v;
    }
    return 1;
}

static int parse_epilogue(const arr_arg *P, const arr_arg *dP, int m, int g, PyObject *o_act,
                          int c, bn_epilogue *ep, const bn_epilogue **use)
{
    const char *fn = P->fn;
    *ep = (bn_epilogue){NULL, NULL, 0, 1, 0, -1.0f};
    if (!parse_act(fn, o_act, &ep->act))
        return 0;
    if (dP->a && !P->a)
        return fail(PyExc_ValueError, "%s: 'dP' needs 'P'", fn);
    if (P->a) {
        if (!check_gate_width(fn, c, m, DIM(*P, 0), g) || !same_shape(dP, P))
            return 0;
        ep->P = DATA(*P); ep->dP = DATA(*dP); ep->m = m; ep->g = g; ep->ngroups = DIM(*P, 0);
    }
    *use = (P->a || ep->act >= 0.0f) ? ep : NULL;
    return 1;
}

static PyObject *py_batchnorm_forward_train(PyObject *self, PyObject *args, PyObject *kw)
{
    const char *FN = "batchnorm_forward_train";
    static char *kwlist[] = {"out", "save_mean", "save_invstd", "running_mean", "running_var",
                             "inp", "gamma", "beta", "momentum", "eps", "P", "min_ch",
                             "group_size", "act", NULL};
    arr_arg out = F32(out, 4, ARG_OUT), sm = F32(save_mean, 1, ARG_OUT),
            si = F32(save_invstd, 1, ARG_OUT), rm = F32(running_mean, 1, ARG_OUT),
            rv = F32(running_var, 1, ARG_OUT), inp = F32(inp, 4, 0), g = F32(gamma, 1, ARG_OPT),
            b = F32(beta, 1, ARG_OPT), P = F32(P, 1, ARG_OPT), dP = F32(dP, 1, ARG_OPT);
    PyObject *o_act = NULL;
    float momentum, eps;
    int m = 0, gs = 1, hw;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&O&O&O&O&O&O&ff|$O&iiO", kwlist, A(out),
                                     A(sm), A(si), A(rm), A(rv), A(inp), A(g), A(b), &momentum,
                                     &eps, A(P), &m, &gs, &o_act) ||
        !same_shape(&out, &inp) || (hw = plane_size(&inp)) < 0)
        return NULL;
    const int n = DIM(inp, 0), c = DIM(inp, 1);
    if (c < 1)
        return PyErr_Format(PyExc_ValueError, "%s: argument 'inp' has no channels", FN);
    if ((int64_t)n * hw < 2)
        return PyErr_Format(PyExc_ValueError, "%s: expected more than 1 value per channel when "
                            "training (inp shape %d,%d,%d,%d)", FN, n, c, DIM(inp, 2), DIM(inp, 3));
    if (DIM(sm, 0) != c || DIM(si, 0) != c)
        return PyErr_Format(PyExc_ValueError, "%s: 'save_mean'/'save_invstd' must have %d entries",
                            FN, c);
    if (!check_len(&rm, c) || !check_len(&rv, c) || !check_len(&g, c) || !check_len(&b, c))
        return NULL;
    if (!(eps > 0.0f))
        return PyErr_Format(PyExc_ValueError, "%s: eps must be > 0", FN);
    bn_epilogue epv;
    const bn_epilogue *ep;
    if (!parse_epilogue(&P, &dP, m, gs, o_act, c, &epv, &ep))
        return NULL;
    dmcp_status st;
    NOGIL(st = batchnorm_forward_train(DATA(out), DATA(sm), DATA(si), DATA(rm), DATA(rv),
                                       DATA(inp), DATA(g), DATA(b), n, c, hw, momentum, eps, ep));
    return done(st, FN);
}

static PyObject *py_batchnorm_forward_eval(PyObject *self, PyObject *args, PyObject *kw)
{
    const char *FN = "batchnorm_forward_eval";
    static char *kwlist[] = {"out", "inp", "gamma", "beta", "running_mean", "running_var", "eps",
                             "P", "min_ch", "group_size", "act", NULL};
    arr_arg out = F32(out, 4, ARG_OUT), inp = F32(inp, 4, 0), g = F32(gamma, 1, ARG_OPT),
            b = F32(beta, 1, ARG_OPT), rm = F32(running_mean, 1, 0), rv = F32(running_var, 1, 0),
            P = F32(P, 1, ARG_OPT), dP = F32(dP, 1, ARG_OPT);
    PyObject *o_act = NULL;
    float eps;
    int m = 0, gs = 1, hw;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&O&O&O&O&f|$O&iiO", kwlist, A(out), A(inp),
                                     A(g), A(b), A(rm), A(rv), &eps, A(P), &m, &gs, &o_act) ||
        !same_shape(&out, &inp) || (hw = plane_size(&inp)) < 0)
        return NULL;
    const int n = DIM(inp, 0), c = DIM(inp, 1);
    bn_epilogue epv;
    const bn_epilogue *ep;
    if (!check_len(&rm, c) || !check_len(&rv, c) || !check_len(&g, c) || !check_len(&b, c) ||
        !parse_epilogue(&P, &dP, m, gs, o_act, c, &epv, &ep))
        return NULL;
    dmcp_status st;
    NOGIL(st = batchnorm_forward_eval(DATA(out), DATA(inp), DATA(g), DATA(b), DATA(rm), DATA(rv),
                                      n, c, hw, eps, ep));
    return done(st, FN);
}

static PyObject *py_batchnorm_backward(PyObject *self, PyObject *args, PyObject *kw)
{
    const char *FN = "batchnorm_backward";
    static char *kwlist[] = {"dinp", "dgamma", "dbeta", "dout", "inp", "mean", "invstd", "gamma",
                             "train", "accumulate", "beta", "P", "dP", "min_ch", "group_size",
                             "act", NULL};
    arr_arg dinp = F32(dinp, 4, ARG_OUT | ARG_OPT), dg = F32(dgamma, 1, ARG_OUT | ARG_OPT),
            db = F32(dbeta, 1, ARG_OUT | ARG_OPT), dout = F32(dout, 4, 0), inp = F32(inp, 4, 0),
            mean = F32(mean, 1, 0), is = F32(invstd, 1, 0), g = F32(gamma, 1, ARG_OPT),
            b = F32(beta, 1, ARG_OPT), P = F32(P, 1, ARG_OPT), dP = F32(dP, 1, ARG_OUT | ARG_OPT);
    PyObject *o_act = NULL;
    int train, accumulate = 1, m = 0, gs = 1, hw;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O&O&O&O&O&O&O&O&p|p$O&O&O&iiO", kwlist, A(dinp),
                                     A(dg), A(db), A(dout), A(inp), A(mean), A(is), A(g), &train,
                                     &accumulate, A(b), A(P), A(dP), &m, &gs, &o_act) ||
        !same_shape(&dout, &inp) || !same_shape(&dinp, &inp) || (hw = plane_size(&inp)) < 0)
        return NULL;
    const int n = DIM(inp, 0), c = DIM(inp, 1);
    bn_epilogue epv;
    const bn_epilogue *ep;
    if (!check_len(&mean, c) || !check_len(&is, c) || !check_len(&g, c) || !check_len(&b, c) ||
        !check_len(&dg, c) || !check_len(&db, c) ||
        !parse_epilogue(&P, &dP, m, gs, o_act, c, &epv, &ep))
        return NULL;
    dmcp_status st;
    NOGIL(st = batchnorm_backward(DATA(dinp), DATA(dg), DATA(db), DATA(dout), DATA(inp),
                                  DATA(mean), DATA(is), DATA(g), DATA(b), n, c, hw, train,
                                  accumulate, ep));
    return done(st, FN);
}

/* ---------------------------------------------------------------- elementwise */

static PyObject *py_relu_forward(PyObject *self, PyObject *args)
{
    const char *FN = "relu_forward";
    arr_arg out = F32(out, -1, ARG_OUT), inp = F32(inp, -1, 0);
    float cap = 0.0f;
    if (!PyArg_ParseTuple(args, "O&O&|f", A(out), A(inp), &cap) || !same_shape(&out, &inp))
        return NULL;
    NOGIL(relu_forward(DATA(out), DATA(inp), (size_t)PyArray_SIZE(inp.a), cap));
    Py_RETURN_NONE;
}

static PyObject *py_relu_backward(PyObject *self, PyObject *args)
{
    const char *FN = "relu_backward";
    arr_arg dinp = F32(dinp, -1, ARG_OUT), dout = F32(dout, -1, 0), out = F32(out, -1, 0);
    float cap = 0.0f;
    int accumulate = 1;
    if (!PyArg_ParseTuple(args, "O&O&O&|fp", A(dinp), A(dout), A(out), &cap, &accumulate) ||
        !same_shape(&dinp, &dout) || !same_shape(&out, &dout))
        return NULL;
    NOGIL(relu_backward(DATA(dinp), DATA(dout), DATA(out), (size_t)PyArray_SIZE(out.a), cap,
                        accumulate));
    Py_RETURN_NONE;
}

static PyObject *py_add_forward(PyObject *self, PyObject *args)
{
    const char *FN = "add_forward";
    arr_arg out = F32(out, -1, ARG_OUT), a = F32(a, -1, 0), b = F32(b, -1, 0);
    PyObject *o_act = NULL;
    if (!PyArg_ParseTuple(args, "O&O&O&|O", A(out), A(a), A(b), &o_act) || !same_shape(&a, &b) ||
        !same_shape(&out, &a))
        return NULL;
    float act;
    if (!parse_act(FN, o_act, &act))
        return NULL;
    NOGIL(add_forward(DATA(out), DATA(a), DATA(b), (size_t)PyArray_SIZE(a.a), act));
    Py_RETURN_NONE;
}

static PyObject *py_add_backward(PyObject *self, PyObject *args)
{
    const char *FN = "add_backward";
    arr_arg dinp = F32(dinp, -1, ARG_OUT), dout = F32(dout, -1, 0);
    if (!PyArg_ParseTuple(args, "O&O&", A(dinp), A(dout)) || !same_shape(&dinp, &dout))
        return NULL;
    NOGIL(add_backward(DATA(dinp), DATA(dout), (size_t)PyArray_SIZE(dout.a)));
    Py_RETURN_NONE;
}

static PyObject *py_dropout_forward(PyObject *self, PyObject *args)
{
    const char *FN = "dropout_forward";
    arr_arg out = F32(out, -1, ARG_OUT), mask = F32(mask, -1, ARG_OUT), inp = F32(inp, -1, 0);
    float p;
    unsigned long long seed;
    if (!PyArg_ParseTuple(args, "O&O&O&fK", A(out), A(mask), A(inp), &p, &seed) ||
        !same_shape(&out, &inp) || !same_shape(&mask, &inp))
        return NULL;
    if (!(p >= 0.0f && p < 1.0f)) {
        PyObject *pv = PyFloat_FromDouble((double)p);
        if (pv) PyErr_Format(PyExc_ValueError, "%s: p must be in [0, 1), got %R", FN, pv);
        Py_XDECREF(pv);
        return NULL;
    }
    NOGIL(dropout_forward(DATA(out), DATA(mask), DATA(inp), (size_t)PyArray_SIZE(inp.a), p,
                          (uint64_t)seed));
    Py_RETURN_NONE;
}

static PyObject *py_dropout_backward(PyObject *self, PyObject *args)
{
    const char *FN = "dropout_backward";
    arr_arg dinp = F32(dinp, -1, ARG_OUT), dout = F32(dout, -1, 0), mask = F32(mask, -1, 0);
    if (!PyArg_ParseTuple(args, "O&O&O&", A(dinp), A(dout), A(mask)) ||
        !same_shape(&dinp, &dout) || !same_shape(&mask, &dout))
        return NULL;
    NOGIL(dropout_backward(DATA(dinp), DATA(dout), DATA(mask), (size_t)PyArray_SIZE(dout.a)));
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- pooling */

static PyObject *py_maxpool2d_forward(PyObject *self, PyObject *args)
{
    const char *FN = "maxpool2d_forward";
    arr_arg out = F32(out, 4, ARG_OUT), am = ARR(argmax, NPY_INT32, 4, ARG_OUT),
            inp = F32(inp, 4, 0);
    int k, s, p;
    if (!PyArg_ParseTuple(args, "O&O&O&iii", A(out), A(am), A(inp), &k, &s, &p) ||
        !same_shape(&am, &out))
        return NULL;
    if (k < 1 || s < 1 || p < 0 || 2LL * p > k)
        return PyErr_Format(PyExc_ValueError, "%s: need kernel >= 1, stride >= 1, 0 <= padding <= "
                            "kernel/2 (got %d, %d, %d)", FN, k, s, p);
    const int n = DIM(inp, 0), c = DIM(inp, 1), h = DIM(inp, 2), w = DIM(inp, 3);
    const int64_t hp = (int64_t)h + 2 * p, wp = (int64_t)w + 2 * p;
    if (n < 1 || c < 1 || h < 1 || w < 1 || hp < k || wp < k)
        return PyErr_Format(PyExc_ValueError, "%s: 'inp' of shape (%d,%d,%d,%d) is empty or "
                            "smaller than the kernel", FN, n, c, h, w);
    /* padding within the input (so kernel <= 3x the input) keeps windows and indices in int */
    if (p > h || p > w)
        return PyErr_Format(PyExc_ValueError, "%s: padding %d is larger than 'inp' (%dx%d)",
                            FN, p, h, w);
    if (plane_size(&inp) < 0)
        return NULL;
    const int oh = (int)((hp - k) / s + 1), ow = (int)((wp - k) / s + 1);
    if (DIM(out, 0) != n || DIM(out, 1) != c || DIM(out, 2) != oh || DIM(out, 3) != ow)
        return PyErr_Format(PyExc_ValueError, "%s: 'out' must have shape (%d,%d,%d,%d)", FN, n, c,
                            oh, ow);
    dmcp_status st;
    NOGIL(st = maxpool2d_forward(DATA(out), DATA_AS(int32_t, am), DATA(inp), n, c, h, w, k, s, p,
                                 oh, ow));
    return done(st, FN);
}

static PyObject *py_maxpool2d_backward(PyObject *self, PyObject *args)
{
    const char *FN = "maxpool2d_backward";
    arr_arg dinp = F32(dinp, 4, ARG_OUT), dout = F32(dout, 4, 0),
            am = ARR(argmax, NPY_INT32, 4, 0);
    if (!PyArg_ParseTuple(args, "O&O&O&", A(dinp), A(dout), A(am)) || !same_shape(&am, &dout) ||
        plane_size(&dinp) < 0 || plane_size(&dout) < 0)
        return NULL;
    if (DIM(dinp, 0) != DIM(dout, 0) || DIM(dinp, 1) != DIM(dout, 1))
        return PyErr_Format(PyExc_ValueError, "%s: 'dinp' and 'dout' differ in batch or channels",
                            FN);
    dmcp_status st;
    NOGIL(st = maxpool2d_backward(DATA(dinp), DATA(dout), DATA_AS(const int32_t, am),
                                  DIM(dinp, 0), DIM(dinp, 1), DIM(dinp, 2), DIM(dinp, 3),
                                  DIM(dout, 2), DIM(dout, 3)));
    if (st != DMCP_OK)
        return PyErr_Format(PyExc_ValueError, "%s: 'argmax' holds an index outside the input "
                            "plane", FN);
    Py_RETURN_NONE;
}

static PyObject *py_avgpool_global_forward(PyObject *self, PyObject *args)
{
    const char *FN = "avgpool_global_forward";
    arr_arg out = F32(out, 2, ARG_OUT), inp = F32(inp, 4, 0);
    int hw;
    if (!PyArg_ParseTuple(args, "O&O&", A(out), A(inp)) || (hw = plane_size(&inp)) < 0)
        return NULL;
    const int n = DIM(inp, 0), c = DIM(inp, 1);
    if (hw < 1 || DIM(out, 0) != n || DIM(out, 1) != c)
        return PyErr_Format(PyExc_ValueError, "%s: 'out' must have shape (%d,%d) and 'inp' a "
                            "non-empty plane", FN, n, c);
    NOGIL(avgpool_global_forward(DATA(out), DATA(inp), n, c, hw));
    Py_RETURN_NONE;
}

static PyObject *py_avgpool_global_backward(PyObject *self, PyObject *args)
{
    const char *FN = "avgpool_global_backward";
    arr_arg dinp = F32(dinp, 4, ARG_OUT), dout = F32(dout, 2, 0);
    int hw;
    if (!PyArg_ParseTuple(args, "O&O&", A(dinp), A(dout)) || (hw = plane_size(&dinp)) < 0)
        return NULL;
    const int n = DIM(dinp, 0), c = DIM(dinp, 1);
    if (hw < 1 || DIM(dout, 0) != n || DIM(dout, 1) != c)
        return PyErr_Format(PyExc_ValueError, "%s: 'dout' must have shape (%d,%d)", FN, n, c);
    NOGIL(avgpool_global_backward(DATA(dinp), DATA(dout), n, c, hw));
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- linear */

/* inp (n, in_f), out (n, out_f) inside weight (OUT_full, IN_full). */
static int linear_check(const arr_arg *inp, const arr_arg *w, const arr_arg *out,
                        int *n, int *in_f, int *out_f)
{
    const char *fn = inp->fn;
    *n = DIM(*inp, 0); *in_f = DIM(*inp, 1); *out_f = DIM(*out, 1);
    if (*n < 1 || *in_f < 1 || *out_f < 1)
        return fail(PyExc_ValueError, "%s: zero-size 'inp' or '%s'", fn, out->name);
    if (DIM(*out, 0) != *n)
        return fail(PyExc_ValueError, "%s: '%s' batch %d differs from 'inp' batch %d",
                    fn, out->name, DIM(*out, 0), *n);
    if (*in_f > DIM(*w, 1) || *out_f > DIM(*w, 0))
        return fail(PyExc_ValueError, "%s: 'weight' of shape (%d,%d) is smaller than "
                    "(%s features %d, inp features %d)", fn, DIM(*w, 0), DIM(*w, 1), out->name,
                    *out_f, *in_f);
    return 1;
}

static PyObject *linear_forward_impl(PyObject *args, const char *FN, int naive)
{
    arr_arg out = F32(out, 2, ARG_OUT), inp = F32(inp, 2, 0), w = F32(weight, 2, 0),
            b = F32(bias, 1, ARG_OPT);
    int n, in_f, out_f;
    if (!PyArg_ParseTuple(args, "O&O&O&O&", A(out), A(inp), A(w), A(b)) ||
        !linear_check(&inp, &w, &out, &n, &in_f, &out_f) || !check_len(&b, out_f))
        return NULL;
    NOGIL((naive ? linear_forward_naive : linear_forward)(DATA(out), DATA(inp), DATA(w), DATA(b),
                                                          n, in_f, out_f, DIM(w, 1)));
    Py_RETURN_NONE;
}

static PyObject *linear_backward_impl(PyObject *args, const char *FN, int naive)
{
    arr_arg dinp = F32(dinp, 2, ARG_OUT | ARG_OPT), dw = F32(dweight, 2, ARG_OUT | ARG_OPT),
            db = F32(dbias, 1, ARG_OUT | ARG_OPT), dout = F32(dout, 2, 0), inp = F32(inp, 2, 0),
            w = F32(weight, 2, 0);
    int n, in_f, out_f;
    if (!PyArg_ParseTuple(args, "O&O&O&O&O&O&", A(dinp), A(dw), A(db), A(dout), A(inp), A(w)) ||
        !linear_check(&inp, &w, &dout, &n, &in_f, &out_f) || !same_shape(&dinp, &inp) ||
        !same_shape(&dw, &w) || !check_len(&db, out_f))
        return NULL;
    NOGIL((naive ? linear_backward_naive : linear_backward)(DATA(dinp), DATA(dw), DATA(db),
                                                            DATA(dout), DATA(inp), DATA(w), n,
                                                            in_f, out_f, DIM(w, 1)));
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

static int check_logits(const arr_arg *a, const arr_arg *b)
{
    if (DIM(*a, 0) < 1 || DIM(*a, 1) < 1)
        return fail(PyExc_ValueError, "%s: '%s' is empty", a->fn, a->name);
    return same_shape(a, b);
}

static int check_labels(const arr_arg *labels, int n, int k)
{
    const char *fn = labels->fn;
    if (DIM(*labels, 0) != n)
        return fail(PyExc_ValueError, "%s: 'labels' has %d entries for a batch of %d",
                    fn, DIM(*labels, 0), n);
    const int64_t *l = DATA_AS(const int64_t, *labels);
    for (int i = 0; i < n; i++) {
        if (l[i] < 0 || l[i] >= k)
            return fail(PyExc_ValueError, "%s: 'labels'[%d] = %lld is outside [0, %d)",
                        fn, i, (long long)l[i], k);
    }
    return 1;
}

static PyObject *py_crossentropy_forward(PyObject *self, PyObject *args)
{
    const char *FN = "crossentropy_forward";
    arr_arg loss = F32(losses, 1, ARG_OUT), p = F32(probs, 2, ARG_OUT), x = F32(logits, 2, 0),
            l = ARR(labels, NPY_INT64, 1, 0);
    float smoothing;
    if (!PyArg_ParseTuple(args, "O&O&O&O&f", A(loss), A(p), A(x), A(l), &smoothing) ||
        !check_logits(&x, &p))
        return NULL;
    const int n = DIM(x, 0), k = DIM(x, 1);
    if (DIM(loss, 0) != n)
        return PyErr_Format(PyExc_ValueError, "%s: 'losses' must have %d entries", FN, n);
    if (!check_labels(&l, n, k))
        return NULL;
    if (!(smoothing >= 0.0f && smoothing <= 1.0f))
        return PyErr_Format(PyExc_ValueError, "%s: smoothing must be in [0, 1]", FN);
    dmcp_status st;
    NOGIL(st = crossentropy_forward(DATA(loss), DATA(p), DATA(x), DATA_AS(const int64_t, l), n, k,
                                    smoothing));
    return done(st, FN);
}

static PyObject *py_crossentropy_backward(PyObject *self, PyObject *args)
{
    const char *FN = "crossentropy_backward";
    arr_arg d = F32(dlogits, 2, ARG_OUT), p = F32(probs, 2, 0), l = ARR(labels, NPY_INT64, 1, 0);
    float smoothing, scale;
    if (!PyArg_ParseTuple(args, "O&O&O&ff", A(d), A(p), A(l), &smoothing, &scale) ||
        !check_logits(&p, &d) || !check_labels(&l, DIM(p, 0), DIM(p, 1)))
        return NULL;
    dmcp_status st;
    NOGIL(st = crossentropy_backward(DATA(d), DATA(p), DATA_AS(const int64_t, l), DIM(p, 0),
                                     DIM(p, 1), smoothing, scale));
    return done(st, FN);
}

static PyObject *py_kldiv_forward(PyObject *self, PyObject *args)
{
    const char *FN = "kldiv_forward";
    arr_arg loss = F32(losses, 1, ARG_OUT), ps = F32(pstudent, 2, ARG_OUT),
            pt = F32(pteacher, 2, ARG_OUT), s = F32(student, 2, 0), t = F32(teacher, 2, 0);
    float tau;
    if (!PyArg_ParseTuple(args, "O&O&O&O&O&f", A(loss), A(ps), A(pt), A(s), A(t), &tau) ||
        !check_logits(&s, &t) || !same_shape(&ps, &s) || !same_shape(&pt, &s))
        return NULL;
    if (DIM(loss, 0) != DIM(s, 0))
        return PyErr_Format(PyExc_ValueError, "%s: 'losses' must have %d entries", FN, DIM(s, 0));
    if (!(tau > 0.0f))
        return PyErr_Format(PyExc_ValueError, "%s: tau must be > 0", FN);
    NOGIL(kldiv_forward(DATA(loss), DATA(ps), DATA(pt), DATA(s), DATA(t), DIM(s, 0), DIM(s, 1),
                        tau));
    Py_RETURN_NONE;
}

static PyObject *py_kldiv_backward(PyObject *self, PyObject *args)
{
    const char *FN = "kldiv_backward";
    arr_arg d = F32(dstudent, 2, ARG_OUT), ps = F32(pstudent, 2, 0), pt = F32(pteacher, 2, 0);
    float tau, scale;
    if (!PyArg_ParseTuple(args, "O&O&O&ff", A(d), A(ps), A(pt), &tau, &scale) ||
        !check_logits(&ps, &pt) || !same_shape(&d, &ps))
        return NULL;
    NOGIL(kldiv_backward(DATA(d), DATA(ps), DATA(pt), DIM(ps, 0), DIM(ps, 1), tau, scale));
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- optimisers */

static PyObject *py_sgd_step(PyObject *self, PyObject *args)
{
    const char *FN = "sgd_step";
    arr_arg p = F32(param, -1, ARG_OUT), buf = F32(momentum_buffer, -1, ARG_OUT | ARG_OPT),
            g = F32(grad, -1, 0);
    float lr, momentum, dampening, wd;
    int nesterov, first;
    if (!PyArg_ParseTuple(args, "O&O&O&ffffpp", A(p), A(buf), A(g), &lr, &momentum, &dampening,
                          &wd, &nesterov, &first) ||
        !same_shape(&g, &p) || !same_shape(&buf, &p))
        return NULL;
    if (momentum != 0.0f && !buf.a)
        return PyErr_Format(PyExc_ValueError, "%s: 'momentum_buffer' is required when "
                            "momentum != 0", FN);
    NOGIL(sgd_step(DATA(p), DATA(buf), DATA(g), (size_t)PyArray_SIZE(p.a), lr, momentum,
                   dampening, wd, nesterov, first));
    Py_RETURN_NONE;
}

static PyObject *py_adam_step(PyObject *self, PyObject *args)
{
    const char *FN = "adam_step";
    arr_arg p = F32(param, -1, ARG_OUT), m = F32(exp_avg, -1, ARG_OUT),
            v = F32(exp_avg_sq, -1, ARG_OUT), g = F32(grad, -1, 0);
    float lr, eps, wd;
    double b1, b2;
    long step;
    if (!PyArg_ParseTuple(args, "O&O&O&O&fddffl", A(p), A(m), A(v), A(g), &lr, &b1, &b2, &eps,
                          &wd, &step) ||
        !same_shape(&g, &p) || !same_shape(&m, &p) || !same_shape(&v, &p))
        return NULL;
    if (step < 1)
        return PyErr_Format(PyExc_ValueError, "%s: step must be >= 1", FN);
    NOGIL(adam_step(DATA(p), DATA(m), DATA(v), DATA(g), (size_t)PyArray_SIZE(p.a), lr, b1, b2,
                    eps, wd, step));
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- markov gates */

static int check_prob_type(const char *fn, int prob_type)
{
    if (prob_type != DMCP_PROB_SIGMOID && prob_type != DMCP_PROB_EXP)
        return fail(PyExc_ValueError, "%s: prob_type must be 0 (sigmoid) or 1 (exp), got %d",
                    fn, prob_type);
    return 1;
}

static PyObject *py_markov_probs_forward(PyObject *self, PyObject *args)
{
    const char *FN = "markov_probs_forward";
    arr_arg P = F32(P, 1, ARG_OUT), a = F32(alpha, 1, 0);
    int prob_type;
    if (!PyArg_ParseTuple(args, "O&O&i", A(P), A(a), &prob_type) || !same_shape(&P, &a) ||
        !check_prob_type(FN, prob_type))
        return NULL;
    markov_probs_forward(DATA(P), DATA(a), DIM(a, 0), prob_type);
    Py_RETURN_NONE;
}

static PyObject *py_markov_probs_backward(PyObject *self, PyObject *args)
{
    const char *FN = "markov_probs_backward";
    arr_arg da = F32(dalpha, 1, ARG_OUT), dP = F32(dP, 1, 0), P = F32(P, 1, 0),
            a = F32(alpha, 1, 0);
    int prob_type;
    if (!PyArg_ParseTuple(args, "O&O&O&O&i", A(da), A(dP), A(P), A(a), &prob_type) ||
        !same_shape(&da, &a) || !same_shape(&dP, &a) || !same_shape(&P, &a) ||
        !check_prob_type(FN, prob_type))
        return NULL;
    markov_probs_backward(DATA(da), DATA(dP), DATA(P), DATA(a), DIM(a, 0), prob_type);
    Py_RETURN_NONE;
}

/* inp (n, c, H, W) non-empty, its c channels described by P, min_ch m and group_size g. */
static int gate_check(const arr_arg *x, const arr_arg *P, int m, int g, int *n, int *c, int *hw)
{
    *n = DIM(*x, 0); *c = DIM(*x, 1);
    if ((*hw = plane_size(x)) < 0)
        return 0;
    if (*n < 1 || *c < 1 || *hw < 1)
        return fail(PyExc_ValueError, "%s: argument 'inp' is empty (shape %d,%d,%d,%d)",
                    x->fn, *n, *c, DIM(*x, 2), DIM(*x, 3));
    return check_gate_width(x->fn, *c, m, DIM(*P, 0), g);
}

static PyObject *py_gate_forward(PyObject *self, PyObject *args)
{
    const char *FN = "gate_forward";
    arr_arg out = F32(out, 4, ARG_OUT), inp = F32(inp, 4, 0), P = F32(P, 1, 0);
    int m, g, n, c, hw;
    if (!PyArg_ParseTuple(args, "O&O&O&ii", A(out), A(inp), A(P), &m, &g) ||
        !same_shape(&out, &inp) || !gate_check(&inp, &P, m, g, &n, &c, &hw))
        return NULL;
    NOGIL(gate_forward(DATA(out), DATA(inp), DATA(P), n, c, hw, m, g, DIM(P, 0)));
    Py_RETURN_NONE;
}

static PyObject *py_gate_backward(PyObject *self, PyObject *args)
{
    const char *FN = "gate_backward";
    arr_arg dinp = F32(dinp, 4, ARG_OUT | ARG_OPT), dP = F32(dP, 1, ARG_OUT | ARG_OPT),
            dout = F32(dout, 4, 0), inp = F32(inp, 4, 0), P = F32(P, 1, 0);
    int m, g, n, c, hw, accumulate = 1;
    if (!PyArg_ParseTuple(args, "O&O&O&O&O&ii|p", A(dinp), A(dP), A(dout), A(inp), A(P), &m, &g,
                          &accumulate) ||
        !same_shape(&dout, &inp) || !same_shape(&dinp, &inp) || !same_shape(&dP, &P) ||
        !gate_check(&inp, &P, m, g, &n, &c, &hw))
        return NULL;
    NOGIL(gate_backward(DATA(dinp), DATA(dP), DATA(dout), DATA(inp), DATA(P), n, c, hw, m, g,
                        DIM(P, 0), accumulate));
    Py_RETURN_NONE;
}

/* ---------------------------------------------------------------- expected FLOPs */

/* terms: float64 (T, 5) rows [unit_a, unit_b, const_a, const_b, coef]; unit -1 = constant. */
static flops_term *terms_from(const arr_arg *t, int nunits, int *nterms)
{
    const char *fn = t->fn;
    if (DIM(*t, 1) != 5) {
        PyErr_Format(PyExc_ValueError, "%s: 'terms' must have 5 columns "
                     "[unit_a, unit_b, const_a, const_b, coef], got %d", fn, DIM(*t, 1));
        return NULL;
    }
    *nterms = DIM(*t, 0);
    flops_term *out = PyMem_Malloc(sizeof(flops_term) * (*nterms > 0 ? *nterms : 1));
    if (!out) {
        PyErr_NoMemory();
        return NULL;
    }
    const double *d = DATA_AS(const double, *t);
    for (int i = 0; i < *nterms; i++) {
        const double *r = d + (size_t)i * 5;
        /* units as doubles first: a cast of an out-of-range double to int is undefined */
        if (!(r[0] >= -1.0 && r[0] < nunits && r[1] >= -1.0 && r[1] < nunits) ||
            r[0] != (double)(int)r[0] || r[1] != (double)(int)r[1]) {
            PyErr_Format(PyExc_ValueError, "%s: 'terms' row %d names a unit outside [-1, %d)",
                         fn, i, nunits);
            PyMem_Free(out);
            return NULL;
        }
        out[i].unit_a = (int)r[0]; out[i].unit_b = (int)r[1];
        out[i].const_a = r[2]; out[i].const_b = r[3]; out[i].coef = r[4];
    }
    return out;
}

static PyObject *py_flops_of_widths(PyObject *self, PyObject *args)
{
    const char *FN = "flops_of_widths";
    arr_arg w = ARR(widths, NPY_FLOAT64, 1, 0), t = ARR(terms, NPY_FLOAT64, 2, 0),
            dw = ARR(dwidths, NPY_FLOAT64, 1, ARG_OUT | ARG_OPT);
    int nterms;
    flops_term *terms;
    if (!PyArg_ParseTuple(args, "O&O&|O&", A(w), A(t), A(dw)) || !same_shape(&dw, &w) ||
        !(terms = terms_from(&t, DIM(w, 0), &nterms)))
        return NULL;
    double f = flops_of_widths(DATA_AS(double, dw), DATA_AS(const double, w), DIM(w, 0), terms,
                               nterms);
    PyMem_Free(terms);
    return PyFloat_FromDouble(f);
}

/* flops_expected(alpha, units_int32 (U,4), terms (T,5), prob_type, dalpha=None, scale=1.0) -> float */
static PyObject *py_flops_expected(PyObject *self, PyObject *args)
{
    const char *FN = "flops_expected";
    arr_arg a = F32(alpha, 1, 0), u = ARR(units, NPY_INT32, 2, 0),
            t = ARR(terms, NPY_FLOAT64, 2, 0), da = F32(dalpha, 1, ARG_OUT | ARG_OPT);
    int prob_type;
    double scale = 1.0;
    if (!PyArg_ParseTuple(args, "O&O&O&i|O&d", A(a), A(u), A(t), &prob_type, A(da), &scale) ||
        !same_shape(&da, &a) || !check_prob_type(FN, prob_type))
        return NULL;
    if (DIM(u, 1) != 4)
        return PyErr_Format(PyExc_ValueError, "%s: 'units' must have 4 columns "
                            "[offset, ngroups, min_ch, group_size], got %d", FN, DIM(u, 1));
    const int nunits = DIM(u, 0), nalpha = DIM(a, 0);
    const flops_unit *units = DATA_AS(const flops_unit, u);
    for (int i = 0; i < nunits; i++) {
        const flops_unit *U = units + i;
        if (U->offset < 0 || U->ngroups < 0 || (int64_t)U->offset + U->ngroups > nalpha ||
            U->min_ch < 0 || U->group_size < 0)
            return PyErr_Format(PyExc_ValueError, "%s: 'units' row %d (offset %d, ngroups %d, "
                                "min %d, group %d) does not fit %d alphas", FN, i, U->offset,
                                U->ngroups, U->min_ch, U->group_size, nalpha);
    }
    int nterms;
    flops_term *terms = terms_from(&t, nunits, &nterms);
    if (!terms)
        return NULL;
    void *work = PyMem_Malloc(flops_work_bytes(nalpha, nunits) + 16);
    if (!work) {
        PyMem_Free(terms);
        return PyErr_NoMemory();
    }
    double f = 0.0;
    dmcp_status st = flops_expected(&f, DATA(da), DATA(a), units, nunits, terms, nterms,
                                    prob_type, scale, work);
    PyMem_Free(work);
    PyMem_Free(terms);
    if (st != DMCP_OK)
        return done(st, FN);
    return PyFloat_FromDouble(f);
}

/* ---------------------------------------------------------------- image */

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
    if (PyUnicode_Check(o_data) || !PyObject_CheckBuffer(o_data))
        return PyErr_Format(PyExc_TypeError, "%s: argument 'data' must be bytes (the file's "
                            "contents), not %s", FN, Py_TYPE(o_data)->tp_name);
    Py_buffer view;
    if (PyObject_GetBuffer(o_data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    uint8_t *pix = NULL;
    int h = 0, w = 0;
    dmcp_status st;
    NOGIL(st = image_decode(&pix, &h, &w, (const uint8_t *)view.buf, (size_t)view.len));
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
    arr_arg img = IMG(img, 0);
    int quality = 90;
    if (!PyArg_ParseTuple(args, "O&|i", to_image, &img, &quality))
        return NULL;
    if (DIM(img, 2) != 3)
        return PyErr_Format(PyExc_ValueError, "%s: argument 'img' must have 3 channels (RGB), "
                            "got %d", FN, DIM(img, 2));
    if (quality < 1 || quality > 100)
        return PyErr_Format(PyExc_ValueError, "%s: quality must be in 1..100, got %d", FN, quality);
    uint8_t *buf = NULL;
    size_t len = 0;
    dmcp_status st;
    NOGIL(st = image_encode_jpeg(&buf, &len, DATA_AS(const uint8_t, img), DIM(img, 0),
                                 DIM(img, 1), quality));
    if (st != DMCP_OK)
        return done(st, FN);
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
    PyObject *o_out;
    arr_arg inp = IMG(inp, 0), out_u8 = IMG(out, ARG_OUT), out_f32 = F32(out, 3, ARG_OUT);
    resize_geom g;
    g.rh = -1; g.rw = -1; g.oy = 0; g.ox = 0;
    if (!PyArg_ParseTuple(args, "OO&iiii|iiii", &o_out, to_image, &inp, &g.crop_y, &g.crop_x,
                          &g.crop_h, &g.crop_w, &g.rh, &g.rw, &g.oy, &g.ox))
        return NULL;
    const int is_u8 = PyArray_Check(o_out) && PyArray_TYPE((PyArrayObject *)o_out) == NPY_UINT8;
    arr_arg *out = is_u8 ? &out_u8 : &out_f32;
    if (!to_image(o_out, out))           /* uint8 or float32, not empty */
        return NULL;
    g.h = DIM(inp, 0); g.w = DIM(inp, 1); g.c = DIM(inp, 2);
    g.oh = DIM(*out, 0); g.ow = DIM(*out, 1);
    if (g.rh < 0) g.rh = g.oh;
    if (g.rw < 0) g.rw = g.ow;
    if (DIM(*out, 2) != g.c)
        return PyErr_Format(PyExc_ValueError, "%s: 'out' has %d channels but 'inp' %d", FN,
                            DIM(*out, 2), g.c);
    if (g.crop_h < 1 || g.crop_w < 1 || g.crop_y < 0 || g.crop_x < 0 ||
        (int64_t)g.crop_y + g.crop_h > g.h || (int64_t)g.crop_x + g.crop_w > g.w)
        return PyErr_Format(PyExc_ValueError, "%s: crop (y=%d, x=%d, h=%d, w=%d) is not inside the "
                            "%dx%d input", FN, g.crop_y, g.crop_x, g.crop_h, g.crop_w, g.h, g.w);
    if (g.rh < 1 || g.rw < 1 || g.oy < 0 || g.ox < 0 || (int64_t)g.oy + g.oh > g.rh ||
        (int64_t)g.ox + g.ow > g.rw)
        return PyErr_Format(PyExc_ValueError, "%s: window (oy=%d, ox=%d) of size %dx%d ('out') is "
                            "not inside the %dx%d resized crop", FN, g.oy, g.ox, g.oh, g.ow, g.rh,
                            g.rw);
    dmcp_status st;
    NOGIL(st = is_u8 ? image_resize_crop_u8(DATA_AS(uint8_t, *out), DATA_AS(const uint8_t, inp), &g)
                     : image_resize_crop_f32(DATA(*out), DATA_AS(const uint8_t, inp), &g));
    return done(st, FN);
}

/* flip_horizontal(img uint8 (H, W, C)), in place */
static PyObject *py_flip_horizontal(PyObject *self, PyObject *args)
{
    const char *FN = "flip_horizontal";
    arr_arg img = IMG(img, ARG_OUT);
    if (!PyArg_ParseTuple(args, "O&", to_image, &img))
        return NULL;
    NOGIL(image_flip_horizontal(DATA_AS(uint8_t, img), DIM(img, 0), DIM(img, 1), DIM(img, 2)));
    Py_RETURN_NONE;
}

/* color_jitter(img uint8 (H, W, 1|3), brightness, contrast, saturation, order="bcs"),
 * in place: the adjustments named by the letters of `order`, in that order. */
static PyObject *py_color_jitter(PyObject *self, PyObject *args)
{
    const char *FN = "color_jitter";
    arr_arg img = IMG(img, ARG_OUT);
    double f[3];
    const char *order = "bcs";
    if (!PyArg_ParseTuple(args, "O&ddd|s", to_image, &img, &f[0], &f[1], &f[2], &order))
        return NULL;
    const int c = DIM(img, 2);
    if (c != 1 && c != 3)
        return PyErr_Format(PyExc_ValueError, "%s: argument 'img' must have 1 or 3 channels, "
                            "got %d", FN, c);
    static const char *names[3] = {"brightness", "contrast", "saturation"};
    for (int i = 0; i < 3; i++)
        if (!isfinite(f[i]) || f[i] < 0.0)
            return PyErr_Format(PyExc_ValueError, "%s: %s factor must be finite and >= 0, got %R",
                                FN, names[i], PyTuple_GET_ITEM(args, 1 + i));
    int ops[3], nops = 0, seen = 0;
    for (const char *p = order; *p; p++) {
        const char *at = strchr("bcs", *p);
        if (!at || nops == 3 || (seen & (1 << (at - "bcs"))))
            return PyErr_Format(PyExc_ValueError, "%s: order must list each of 'b', 'c', 's' at "
                                "most once, got '%s'", FN, order);
        seen |= 1 << (at - "bcs");
        ops[nops++] = (int)(at - "bcs");
    }
    uint8_t *px = DATA_AS(uint8_t, img);
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
    arr_arg batch = F32(batch, 4, ARG_OUT), img = IMG(img, 0), mean = F32(mean, 1, 0),
            std = F32(std, 1, 0);
    int index, swap;
    if (!PyArg_ParseTuple(args, "O&iO&O&O&p", A(batch), &index, to_image, &img, A(mean), A(std),
                          &swap))
        return NULL;
    const int n = DIM(batch, 0), c = DIM(batch, 1), h = DIM(batch, 2), w = DIM(batch, 3);
    if (index < 0 || index >= n)
        return PyErr_Format(PyExc_ValueError, "%s: index %d outside the batch of %d", FN, index, n);
    if (DIM(img, 0) != h || DIM(img, 1) != w || DIM(img, 2) != c)
        return PyErr_Format(PyExc_ValueError, "%s: 'img' is %dx%dx%d (H, W, C) but the batch holds "
                            "%dx%dx%d images", FN, DIM(img, 0), DIM(img, 1), DIM(img, 2), h, w, c);
    if (DIM(mean, 0) != c || DIM(std, 0) != c)
        return PyErr_Format(PyExc_ValueError, "%s: 'mean' and 'std' must have %d entries "
                            "(got %d, %d)", FN, c, DIM(mean, 0), DIM(std, 0));
    const float *sd = DATA(std);
    for (int k = 0; k < c; k++)
        if (!(sd[k] > 0.0f) || !isfinite(sd[k]))
            return PyErr_Format(PyExc_ValueError, "%s: 'std' entries must be finite and > 0", FN);
    float *slot = DATA(batch) + (size_t)index * c * h * w;
    NOGIL(image_pack_chw(slot, DATA_AS(const uint8_t, img), h, w, c, DATA(mean), sd, swap));
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
    {"conv2d_forward", (PyCFunction)(void (*)(void))py_conv2d_forward,
     METH_VARARGS | METH_KEYWORDS,
     "conv2d_forward(out, inp, weight, bias, sh, sw, ph, pw, dh, dw, groups, *, scale=None, "
     "act=None): out = act(conv * scale + bias) per output channel (scale and bias may be "
     "None; with scale, an eval-mode BN folded in); act 0 ReLU, act > 0 ReLU capped at act"},
    {"conv2d_forward_naive", (PyCFunction)(void (*)(void))py_conv2d_forward_naive,
     METH_VARARGS | METH_KEYWORDS, "direct-loop conv2d_forward"},
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
    {"add_forward", py_add_forward, METH_VARARGS, "add_forward(out, a, b, act=None); out = a + b, then ReLU (act 0) or ReLU capped at act"},
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
