/* conv2d_depthwise.c: the depthwise path of conv2d (see conv2d_internal.h). */
#include "conv2d_internal.h"

/* ---- depthwise convs: zero-padded planes, flat direct loops ----
 *
 * Each plane (image n, channel ch) is copied into zero-padded phase planes as
 * in the tiled path; then the whole output plane is one flat loop over a grid
 * as wide as a padded phase row (its extra columns computed and dropped), a
 * sum of shifted input rows that the compiler vectorises even for 7x7 planes.
 * Backward-data splits the input into stride phases: input pixel
 * (i*sh + a, j*sw + b) receives the taps whose (a + ph - ky*dh,
 * b + pw - kx*dw) are multiples of the stride, each a shifted read of
 * zero-padded dout.  Backward-weight reads each plane once for all taps; a
 * channel's batch is reduced inside one work item, so no two threads share a
 * weight.  Work items (planes or channels) are cut into DW_SLOTS fixed ranges,
 * each with its own buffer. */

#define DW_SLOTS 32
#define DW_TAPS 64             /* taps per offset table; larger kernels take batches */

/* Geometry of the depthwise buffers. */
typedef struct {
    int slots;                 /* ranges of work items (and buffers) */
    pad_grid fg;               /* forward / backward-weight: padded input, phase split */
    pad_grid bg;               /* backward-data: padded dout, stride 1 */
    ptrdiff_t fgrid, bgrid;    /* floats of the flat output grids */
    ptrdiff_t buf;             /* floats per slot */
} dw_tiling;

/* Rows of dout reaching above (*lo < 0) or below (*hi > 0 past out-1) when
 * input phase a in [0, stride) gathers tap k: q = (a + pad - k*dil)/stride
 * for the taps that divide; rows i < ceil((in - a)/stride). */
static void dw_reach(int in, int out, int k, int stride, int pad, int dil, int *lo, int *hi)
{
    *lo = 0;
    *hi = 0;
    for (int a = 0; a < stride && a < in; a++) {
        const int rows = (in - a + stride - 1) / stride;
        for (int t = 0; t < k; t++) {
            const int num = a + pad - t * dil;
            if (((num % stride) + stride) % stride != 0)
                continue;
            const int q = num >= 0 ? num / stride : -((-num) / stride);
            *lo = DMCP_MIN(*lo, q);
            *hi = DMCP_MAX(*hi, rows - 1 + q - (out - 1));
        }
    }
}

static dw_tiling dw_tiling_of(const conv_shape *s, ptrdiff_t items)
{
    dw_tiling t;
    t.slots = (int)DMCP_MIN(items, (ptrdiff_t)DW_SLOTS);
    /* flat reads run up to a row past the last column read */
    pad_grid_init(&t.fg, s->h + 2 * s->ph, s->w + 2 * s->pw, s->sh, s->sw, s->ph, s->pw,
                  s->oh, s->ow, 0, CONV_MR);
    t.fg.pl += t.fg.wq;
    int ylo, yhi, xlo, xhi;
    dw_reach(s->h, s->oh, s->kh, s->sh, s->ph, s->dh, &ylo, &yhi);
    dw_reach(s->w, s->ow, s->kw, s->sw, s->pw, s->dw, &xlo, &xhi);
    pad_grid_init(&t.bg, -ylo + s->oh + yhi, -xlo + s->ow + xhi, 1, 1, -ylo, -xlo,
                  s->oh, s->ow, 0, CONV_MR);
    t.bg.pl += t.bg.wq;
    t.fgrid = round_up((ptrdiff_t)s->oh * t.fg.wq, CONV_NR);
    t.bgrid = round_up((ptrdiff_t)((s->h + s->sh - 1) / s->sh) * t.bg.wq, CONV_NR);
    t.buf = round_up(DMCP_MAX((ptrdiff_t)s->sh * s->sw * t.fg.pl + t.fgrid,
                              t.bg.pl + s->sw * t.bgrid), CONV_NR);
    return t;
}

static bool conv_is_depthwise(const conv_shape *s)
{
    return s->groups > 1 && s->groups == s->c && s->groups == s->oc &&
           s->w_cin_full == 1;
}

/* The depthwise path: groups == c == oc, and its buffers keep int offsets
 * (others take the GEMM path, one group at a time). */
static bool conv_is_dw_direct(const conv_shape *s)
{
    return conv_is_depthwise(s) && dw_tiling_of(s, 1).buf < INT_MAX;
}

/* First item of slot i of `slots` over n items. */
static ptrdiff_t range_start(int i, int slots, ptrdiff_t n) { return n * i / slots; }

/* ---- 3x3 stride-1 'same' depthwise convs on narrow planes ----
 *
 * The grid above pays per row (a padded row, an epilogue call) and computes
 * wq - ow extra columns: most of the work on a 7x7 plane.  Here a plane of
 * H x W is one flat run of H*W floats with zeros on either side, so the rows
 * above and below read zeros; the taps reading column x-1 and x+1 are summed
 * apart and masked (0/1) at the left and right edges.  The output plane is
 * then a few full vectors (H*W rounded up to 16 floats), with no per-row work.
 * Backward-data is the same loop with the kernel flipped; backward-weight
 * takes the nine dot products in one pass over each plane.  The planes of a
 * slot share its zero margins and masks, set when the slot starts. */

#define DW3_MAX_W 64           /* wider planes keep the grid path: at 112 the two tie */
#define DW3_VEC 16             /* the flat run is rounded up to this */
#define DW3_FLUSH 256          /* products per float lane sum in backward-weight */

static bool dw3_takes(const conv_shape *s)
{
    return s->kh == 3 && s->kw == 3 && s->sh == 1 && s->sw == 1 && s->ph == 1 && s->pw == 1 &&
           s->dh == 1 && s->dw == 1 && s->w <= DW3_MAX_W;
}

/* A slot's buffer: the masks (n each), the plane with m zeros on either side,
 * then a grid of n (backward-weight: dout with zeros past hw). */
typedef struct {
    ptrdiff_t hw, n, m, buf;
} dw3_geom;

static dw3_geom dw3_geom_of(const conv_shape *s)
{
    dw3_geom g;
    g.hw = (ptrdiff_t)s->h * s->w;
    g.n = round_up(g.hw, DW3_VEC);
    g.m = round_up(s->w + 1, DW3_VEC);      /* reads reach w+1 past either end */
    g.buf = round_up(2 * g.n + (g.m + g.n + g.m) + g.n, CONV_NR);
    return g;
}

/* Zeros everywhere, then the masks: column x-1 exists (left), x+1 exists (right). */
static void dw3_slot_init(float *buf, int w, const dw3_geom *g)
{
    memset(buf, 0, (size_t)g->buf * sizeof *buf);
    for (ptrdiff_t f = 0; f < g->hw; f++) {
        buf[f] = f % w != 0 ? 1.0f : 0.0f;
        buf[g->n + f] = f % w != w - 1 ? 1.0f : 0.0f;
    }
}

/* grid[f], f < n: the nine taps of k (row-major; flipped for backward-data)
 * over the flat plane p, columns x-1 and x+1 masked by ml and mr. */
CONV_FMA_CONTRACT
static void dw3_plane(float *restrict grid, const float *p, int w, ptrdiff_t n,
                      const float *restrict ml, const float *restrict mr, const float *k, bool flip)
{
    const float *restrict u = p - w, *restrict c = p, *restrict d = p + w;
    float k0 = k[0], k1 = k[1], k2 = k[2], k3 = k[3], k4 = k[4];
    float k5 = k[5], k6 = k[6], k7 = k[7], k8 = k[8];
    if (flip) {
        k0 = k[8]; k1 = k[7]; k2 = k[6]; k3 = k[5]; k5 = k[3]; k6 = k[2]; k7 = k[1]; k8 = k[0];
    }
    for (ptrdiff_t f = 0; f < n; f++) {
        const float left = k0 * u[f - 1] + k3 * c[f - 1] + k6 * d[f - 1];
        const float mid = k1 * u[f] + k4 * c[f] + k7 * d[f];
        const float right = k2 * u[f + 1] + k5 * c[f + 1] + k8 * d[f + 1];
        grid[f] = mid + ml[f] * left + mr[f] * right;
    }
}

/* lanes[t*DW3_VEC + l] += the sum over f = l (mod DW3_VEC), f < n, of dout[f]
 * * (tap t of the plane p), masked as above: partial sums per vector lane, so
 * that several small planes add up before one reduction. */
CONV_FMA_CONTRACT
static void dw3_dots(float *restrict lanes, const float *restrict dg, const float *p, int w,
                     ptrdiff_t n, const float *restrict ml, const float *restrict mr)
{
    const float *restrict u = p - w, *restrict c = p, *restrict d = p + w;
    float *restrict a = lanes;
    for (ptrdiff_t f0 = 0; f0 < n; f0 += DW3_VEC) {
        #pragma omp simd
        for (int l = 0; l < DW3_VEC; l++) {
            const ptrdiff_t f = f0 + l;
            const float v = dg[f], vl = v * ml[f], vr = v * mr[f];
            a[l] += vl * u[f - 1];
            a[DW3_VEC + l] += v * u[f];
            a[2 * DW3_VEC + l] += vr * u[f + 1];
            a[3 * DW3_VEC + l] += vl * c[f - 1];
            a[4 * DW3_VEC + l] += v * c[f];
            a[5 * DW3_VEC + l] += vr * c[f + 1];
            a[6 * DW3_VEC + l] += vl * d[f - 1];
            a[7 * DW3_VEC + l] += v * d[f];
            a[8 * DW3_VEC + l] += vr * d[f + 1];
        }
    }
}

/* Every plane of src through dw3_plane: forward (dst = the epilogue of the
 * conv) or backward-data (`transpose`: the kernel flipped, dst += it). */
static void dw3_planes(float *dst, const float *src, const float *weight, const conv_epilogue *ep,
                       const conv_shape *s, float *scratch, bool transpose)
{
    const dw3_geom g = dw3_geom_of(s);
    const int c = s->c;
    const ptrdiff_t planes = (ptrdiff_t)s->n * c;
    const int slots = (int)DMCP_MIN(planes, (ptrdiff_t)DW_SLOTS);
    #pragma omp parallel for schedule(dynamic, 1) if (planes * g.hw * 9 > CONV_PAR_MIN)
    for (int i = 0; i < slots; i++) {
        float *buf = scratch + i * g.buf, *pl = buf + 2 * g.n + g.m, *grid = pl + g.n + g.m;
        dw3_slot_init(buf, s->w, &g);
        for (ptrdiff_t p = range_start(i, slots, planes); p < range_start(i + 1, slots, planes); p++) {
            const int ch = (int)(p % c);
            float *restrict d = dst + p * g.hw;
            memcpy(pl, src + p * g.hw, (size_t)g.hw * sizeof *pl);
            dw3_plane(grid, pl, s->w, g.n, buf, buf + g.n, weight + (ptrdiff_t)ch * 9, transpose);
            if (transpose)
                for (ptrdiff_t f = 0; f < g.hw; f++)
                    d[f] += grid[f];
            else
                conv_ep_row(d, grid, g.hw, conv_ep_of(ep, ch));
        }
    }
}

static void dw3_backward(float *dinp, float *dweight, const float *dout, const float *inp,
                         const float *weight, const conv_shape *s, float *scratch)
{
    const dw3_geom g = dw3_geom_of(s);
    const int c = s->c;
    const bool par = (ptrdiff_t)s->n * c * g.hw * 9 > CONV_PAR_MIN;
    if (dinp != NULL)
        dw3_planes(dinp, dout, weight, NULL, s, scratch, true);
    if (dweight != NULL) {
        const int slots = DMCP_MIN(c, DW_SLOTS);
        /* float lane sums take up to DW3_FLUSH products each before a double sum */
        const int flush = (int)DMCP_MAX(1, DW3_FLUSH / (g.n / DW3_VEC));
        #pragma omp parallel for schedule(dynamic, 1) if (par)
        for (int i = 0; i < slots; i++) {
            float *buf = scratch + i * g.buf, *pl = buf + 2 * g.n + g.m, *dg = pl + g.n + g.m;
            dw3_slot_init(buf, s->w, &g);
            for (int ch = (int)range_start(i, slots, c); ch < range_start(i + 1, slots, c); ch++) {
                double acc[9] = {0};
                float lanes[9 * DW3_VEC] = {0};
                for (int b = 0; b < s->n; b++) {
                    const ptrdiff_t p = (ptrdiff_t)b * c + ch;
                    memcpy(pl, inp + p * g.hw, (size_t)g.hw * sizeof *pl);
                    memcpy(dg, dout + p * g.hw, (size_t)g.hw * sizeof *dg);
                    dw3_dots(lanes, dg, pl, s->w, g.n, buf, buf + g.n);
                    if ((b + 1) % flush != 0 && b + 1 < s->n)
                        continue;
                    for (int t = 0; t < 9; t++) {      /* into double every few planes */
                        double sum = 0.0;
                        for (int l = 0; l < DW3_VEC; l++)
                            sum += lanes[t * DW3_VEC + l];
                        acc[t] += sum;
                    }
                    memset(lanes, 0, sizeof lanes);
                }
                for (int t = 0; t < 9; t++)
                    dweight[(ptrdiff_t)ch * 9 + t] += (float)acc[t];
            }
        }
    }
}

static ptrdiff_t dw_scratch(const conv_shape *s)
{
    /* the most work items any call makes: planes */
    const ptrdiff_t planes = (ptrdiff_t)s->n * s->c;
    if (dw3_takes(s))
        return DMCP_MIN(planes, (ptrdiff_t)DW_SLOTS) * dw3_geom_of(s).buf;
    const dw_tiling t = dw_tiling_of(s, planes);
    return t.slots * t.buf;
}

/* off[t] for taps t0 .. t0+nt-1 of one channel in the phase planes of g. */
static void dw_tap_offsets(int *off, int t0, int nt, const pad_grid *g, const conv_shape *s)
{
    for (int t = 0; t < nt; t++) {
        const int ty = (t0 + t) / s->kw * s->dh, tx = (t0 + t) % s->kw * s->dw;
        off[t] = (int)(((ptrdiff_t)(ty % g->sh) * g->sw + tx % g->sw) * g->pl)
               + ty / g->sh * g->wq + tx / g->sw;
    }
}

/* grid[f] (=|+=) sum over nt taps of wk[t] * src[f + off[t]], f < n; 9 taps fused. */
CONV_FMA_CONTRACT
static void dw_grid_taps(float *restrict grid, ptrdiff_t n, const float *src, const int *off,
                         const float *wv, int nt, bool add)
{
    if (nt == 9) {
        const float *r0 = src + off[0], *r1 = src + off[1], *r2 = src + off[2];
        const float *r3 = src + off[3], *r4 = src + off[4], *r5 = src + off[5];
        const float *r6 = src + off[6], *r7 = src + off[7], *r8 = src + off[8];
        const float w0 = wv[0], w1 = wv[1], w2 = wv[2], w3 = wv[3], w4 = wv[4];
        const float w5 = wv[5], w6 = wv[6], w7 = wv[7], w8 = wv[8];
        if (!add) {
            for (ptrdiff_t f = 0; f < n; f++)
                grid[f] = w0 * r0[f] + w1 * r1[f] + w2 * r2[f] + w3 * r3[f] + w4 * r4[f]
                        + w5 * r5[f] + w6 * r6[f] + w7 * r7[f] + w8 * r8[f];
        } else {
            for (ptrdiff_t f = 0; f < n; f++)
                grid[f] += w0 * r0[f] + w1 * r1[f] + w2 * r2[f] + w3 * r3[f] + w4 * r4[f]
                         + w5 * r5[f] + w6 * r6[f] + w7 * r7[f] + w8 * r8[f];
        }
        return;
    }
    for (int t = 0; t < nt; t++) {
        const float w = wv[t], *restrict r = src + off[t];
        if (t == 0 && !add) {
            for (ptrdiff_t f = 0; f < n; f++)
                grid[f] = w * r[f];
        } else {
            for (ptrdiff_t f = 0; f < n; f++)
                grid[f] += w * r[f];
        }
    }
}

/* op (OH,OW) = b + conv(ip (H,W), wk (KH,KW)) for one channel; buf a slot buffer. */
static void dw_forward_plane(float *op, const float *ip, const float *wk, conv_chan_ep e,
                             const conv_shape *s, const dw_tiling *t, float *buf, bool fresh)
{
    const pad_grid *g = &t->fg;
    const int khw = s->kh * s->kw;
    const ptrdiff_t n = (ptrdiff_t)s->oh * g->wq;
    float *src = buf, *grid = buf + (ptrdiff_t)s->sh * s->sw * g->pl;
    int off[DW_TAPS];
    pad_planes(src, ip, 1, s->h, s->w, g, s, fresh);
    for (int t0 = 0; t0 < khw; t0 += DW_TAPS) {
        const int nt = DMCP_MIN(DW_TAPS, khw - t0);
        dw_tap_offsets(off, t0, nt, g, s);
        dw_grid_taps(grid, n, src, off, wk + t0, nt, t0 > 0);
    }
    for (int oy = 0; oy < s->oh; oy++)
        conv_ep_row(op + (ptrdiff_t)oy * s->ow, grid + (ptrdiff_t)oy * g->wq, s->ow, e);
}

/* dip (H,W) += conv_transpose(dop (OH,OW), wk) for one plane; buf a slot
 * buffer.  For each row phase a, the grids of all column phases b are summed
 * first, then added to the rows together (stride 2: one interleaving pass). */
static void dw_backward_input_plane(float *dip, const float *dop, const float *wk,
                                    const conv_shape *s, const dw_tiling *t, float *buf, bool fresh)
{
    const pad_grid *g = &t->bg;
    float *src = buf, *grids = buf + g->pl;
    pad_planes(src, dop, 1, s->oh, s->ow, g, s, fresh);
    for (int a = 0; a < s->sh && a < s->h; a++) {
        const int rows = (s->h - a + s->sh - 1) / s->sh;
        bool any[2] = {false, false};
        for (int b = 0; b < s->sw && b < s->w; b++) {
            float *grid = grids + (ptrdiff_t)b * t->bgrid;
            /* taps landing on input phase (a, b) and where they read dout, in
             * batches of the table */
            int off[DW_TAPS], nt = 0, batches = 0;
            float wv[DW_TAPS];
            for (int ky = 0; ky < s->kh; ky++) {
                const int ny = a + s->ph - ky * s->dh;
                if (((ny % s->sh) + s->sh) % s->sh != 0)
                    continue;
                const int qy = ny >= 0 ? ny / s->sh : -((-ny) / s->sh);
                for (int kx = 0; kx < s->kw; kx++) {
                    const int nx = b + s->pw - kx * s->dw;
                    if (((nx % s->sw) + s->sw) % s->sw != 0)
                        continue;
                    const int qx = nx >= 0 ? nx / s->sw : -((-nx) / s->sw);
                    off[nt] = (qy + g->top) * g->wq + qx + g->left;
                    wv[nt++] = wk[ky * s->kw + kx];
                    if (nt == DW_TAPS) {
                        dw_grid_taps(grid, (ptrdiff_t)rows * g->wq, src, off, wv, nt, batches++ > 0);
                        nt = 0;
                    }
                }
            }
            if (nt > 0)
                dw_grid_taps(grid, (ptrdiff_t)rows * g->wq, src, off, wv, nt, batches++ > 0);
            if (batches == 0)
                memset(grid, 0, (size_t)rows * g->wq * sizeof *grid);
            if (b < 2)
                any[b] = batches > 0;
        }
        for (int i = 0; i < rows; i++) {
            float *restrict irow = dip + (ptrdiff_t)(i * s->sh + a) * s->w;
            const float *restrict g0 = grids + (ptrdiff_t)i * g->wq;
            if (s->sw == 1) {
                if (any[0])
                    for (int x = 0; x < s->w; x++)
                        irow[x] += g0[x];
            } else if (s->sw == 2) {
                const float *restrict g1 = g0 + t->bgrid;
                const int pairs = s->w / 2;
                for (int j = 0; j < pairs; j++) {
                    irow[2 * j] += g0[j];
                    irow[2 * j + 1] += g1[j];
                }
                if (s->w % 2)
                    irow[2 * pairs] += g0[pairs];
            } else {
                for (int x = 0; x < s->w; x++)
                    irow[x] += grids[(ptrdiff_t)(x % s->sw) * t->bgrid + (ptrdiff_t)i * g->wq + x / s->sw];
            }
        }
    }
}

/* acc[t] += sum over f < n of d[f] * src[f + off[t]] for 9 taps. */
static void dw_dots9(double *acc, const float *restrict d, ptrdiff_t n, const float *src,
                     const int *off)
{
    const float *r0 = src + off[0], *r1 = src + off[1], *r2 = src + off[2];
    const float *r3 = src + off[3], *r4 = src + off[4], *r5 = src + off[5];
    const float *r6 = src + off[6], *r7 = src + off[7], *r8 = src + off[8];
    float a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0, a6 = 0, a7 = 0, a8 = 0;
    #pragma omp simd reduction(+:a0, a1, a2, a3, a4, a5, a6, a7, a8)
    for (ptrdiff_t f = 0; f < n; f++) {
        const float v = d[f];
        a0 += v * r0[f]; a1 += v * r1[f]; a2 += v * r2[f];
        a3 += v * r3[f]; a4 += v * r4[f]; a5 += v * r5[f];
        a6 += v * r6[f]; a7 += v * r7[f]; a8 += v * r8[f];
    }
    acc[0] += a0; acc[1] += a1; acc[2] += a2; acc[3] += a3; acc[4] += a4;
    acc[5] += a5; acc[6] += a6; acc[7] += a7; acc[8] += a8;
}

/* dwk (KH,KW) += sum over the batch of dout_ch * taps of inp_ch for channel
 * ch; dout is laid on the flat grid with zeros in its extra columns. */
static void dw_backward_weight_channel(float *dwk, const float *dout, const float *inp, int ch,
                                       const conv_shape *s, const dw_tiling *t, float *buf,
                                       bool fresh)
{
    const pad_grid *g = &t->fg;
    const int khw = s->kh * s->kw, c = s->c, ow = s->ow;
    const ptrdiff_t hw = (ptrdiff_t)s->h * s->w, ohw = (ptrdiff_t)s->oh * ow;
    const ptrdiff_t n = (ptrdiff_t)s->oh * g->wq;
    float *src = buf, *grid = buf + (ptrdiff_t)s->sh * s->sw * g->pl;
    for (int t0 = 0; t0 < khw; t0 += DW_TAPS) {
        const int nt = DMCP_MIN(DW_TAPS, khw - t0);
        int off[DW_TAPS];
        double acc[DW_TAPS];
        dw_tap_offsets(off, t0, nt, g, s);
        for (int i = 0; i < nt; i++)
            acc[i] = 0.0;
        for (int b = 0; b < s->n; b++) {
            const float *dop = dout + ((ptrdiff_t)b * c + ch) * ohw;
            pad_planes(src, inp + ((ptrdiff_t)b * c + ch) * hw, 1, s->h, s->w, g, s, fresh);
            fresh = false;
            for (int oy = 0; oy < s->oh; oy++) {
                float *grow = grid + (ptrdiff_t)oy * g->wq;
                memcpy(grow, dop + (ptrdiff_t)oy * ow, (size_t)ow * sizeof *grow);
                memset(grow + ow, 0, (size_t)(g->wq - ow) * sizeof *grow);
            }
            if (nt == 9) {
                dw_dots9(acc, grid, n, src, off);
                continue;
            }
            for (int i = 0; i < nt; i++) {
                const float *restrict r = src + off[i];
                float sum = 0.0f;
                #pragma omp simd reduction(+:sum)
                for (ptrdiff_t f = 0; f < n; f++)
                    sum += grid[f] * r[f];
                acc[i] += sum;
            }
        }
        for (int i = 0; i < nt; i++)
            dwk[t0 + i] += (float)acc[i];
    }
}

/* out (N,C,OH,OW), inp (N,C,H,W), weight rows of KH*KW, one per channel. */
static void dw_forward(float *out, const float *inp, const float *weight,
                       const conv_epilogue *ep, const conv_shape *s, float *scratch)
{
    const int khw = s->kh * s->kw, c = s->c;
    const ptrdiff_t planes = (ptrdiff_t)s->n * c;
    const ptrdiff_t hw = (ptrdiff_t)s->h * s->w, ohw = (ptrdiff_t)s->oh * s->ow;
    if (dw3_takes(s)) {
        dw3_planes(out, inp, weight, ep, s, scratch, false);
        return;
    }
    const dw_tiling t = dw_tiling_of(s, planes);
    #pragma omp parallel for schedule(dynamic, 1) if (planes * ohw * khw > CONV_PAR_MIN)
    for (int i = 0; i < t.slots; i++) {
        float *src = scratch + i * t.buf;
        const ptrdiff_t p0 = range_start(i, t.slots, planes);
        for (ptrdiff_t p = p0; p < range_start(i + 1, t.slots, planes); p++) {
            const int ch = (int)(p % c);
            dw_forward_plane(out + p * ohw, inp + p * hw, weight + (ptrdiff_t)ch * khw,
                             conv_ep_of(ep, ch), s, &t, src, p == p0);
        }
    }
}

static void dw_backward(float *dinp, float *dweight, const float *dout,
                        const float *inp, const float *weight, const conv_shape *s,
                        float *scratch)
{
    const int khw = s->kh * s->kw, c = s->c;
    const ptrdiff_t hw = (ptrdiff_t)s->h * s->w, ohw = (ptrdiff_t)s->oh * s->ow;
    const ptrdiff_t planes = (ptrdiff_t)s->n * c;
    const ptrdiff_t work = planes * ohw * khw;
    if (dw3_takes(s)) {
        dw3_backward(dinp, dweight, dout, inp, weight, s, scratch);
        return;
    }
    if (dinp != NULL) {
        const dw_tiling t = dw_tiling_of(s, planes);
        #pragma omp parallel for schedule(dynamic, 1) if (work > CONV_PAR_MIN)
        for (int i = 0; i < t.slots; i++) {
            float *src = scratch + i * t.buf;
            const ptrdiff_t p0 = range_start(i, t.slots, planes);
            for (ptrdiff_t p = p0; p < range_start(i + 1, t.slots, planes); p++)
                dw_backward_input_plane(dinp + p * hw, dout + p * ohw, weight + (p % c) * khw,
                                        s, &t, src, p == p0);
        }
    }
    if (dweight != NULL) {
        const dw_tiling t = dw_tiling_of(s, c);
        #pragma omp parallel for schedule(dynamic, 1) if (work > CONV_PAR_MIN)
        for (int i = 0; i < t.slots; i++) {
            float *src = scratch + i * t.buf;
            const ptrdiff_t c0 = range_start(i, t.slots, c);
            for (ptrdiff_t ch = c0; ch < range_start(i + 1, t.slots, c); ch++)
                dw_backward_weight_channel(dweight + ch * khw, dout, inp, (int)ch, s, &t, src,
                                           ch == c0);
        }
    }
}
