/* image.c: JPEG/PNG decoding (libturbojpeg, libpng), bilinear resized crop,
 * flip, colour jitter and the normalising HWC uint8 -> CHW float32 pack.
 * Every kernel is plain C, single-threaded, and returns a status instead of
 * failing: corrupt input is DMCP_ERR_VALUE, never a crash. */
#include "image.h"

#include <math.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

#include <png.h>
#include <turbojpeg.h>

/* ---------------------------------------------------------------- JPEG */

/* Whether the JPEG header (before the first scan) has an Adobe APP14 marker:
 * Adobe writes CMYK inverted, as libjpeg hands it back (PIL's "CMYK;I"). */
static int jpeg_has_adobe_marker(const uint8_t *d, size_t n)
{
    size_t i = 2;
    while (i + 4 <= n) {
        if (d[i] != 0xFF) return 0;
        const uint8_t m = d[i + 1];
        if (m == 0xFF) { i++; continue; }                     /* fill byte */
        if (m == 0xDA || m == 0xD9) return 0;                  /* SOS, EOI */
        if (m == 0x01 || (m >= 0xD0 && m <= 0xD7)) { i += 2; continue; }
        const size_t seglen = ((size_t)d[i + 2] << 8) | d[i + 3];
        if (seglen < 2) return 0;
        if (m == 0xEE && seglen >= 7 && i + 9 <= n && memcmp(d + i + 4, "Adobe", 5) == 0)
            return 1;
        i += 2 + seglen;
    }
    return 0;
}

/* Case-insensitive "premature end" in libjpeg's last warning: the data was
 * truncated and libjpeg padded the image (PIL refuses such files). */
static int is_truncation_warning(const char *msg)
{
    static const char key[] = "premature end";
    for (const char *p = msg; p && *p; p++) {
        size_t k = 0;
        while (key[k] && p[k] && (p[k] | 0x20) == key[k]) k++;
        if (!key[k]) return 1;
    }
    return 0;
}

static dmcp_status decode_jpeg(uint8_t **out, int *oh, int *ow, const uint8_t *data, size_t len)
{
    tjhandle tj = tjInitDecompress();
    if (!tj) return DMCP_ERR_NOMEM;
    dmcp_status st = DMCP_ERR_VALUE;
    uint8_t *buf = NULL;
    int w, h, subsamp, cs;
    if (tjDecompressHeader3(tj, data, (unsigned long)len, &w, &h, &subsamp, &cs) != 0) goto done;
    if (w < 1 || h < 1 || (long)w * h > IMAGE_MAX_PIXELS) goto done;
    const int cmyk = cs == TJCS_CMYK || cs == TJCS_YCCK;
    const int pf = cmyk ? TJPF_CMYK : TJPF_RGB;
    buf = malloc((size_t)w * h * tjPixelSize[pf]);
    if (!buf) { st = DMCP_ERR_NOMEM; goto done; }
    if (tjDecompress2(tj, data, (unsigned long)len, buf, w, 0, h, pf, TJFLAG_LIMITSCANS) != 0) {
        if (tjGetErrorCode(tj) != TJERR_WARNING || is_truncation_warning(tjGetErrorStr2(tj)))
            goto done;
    }
    if (cmyk) {   /* PIL's cmyk2rgb: R = (255 - C)(255 - K) / 255 on the true CMYK */
        const int inverted = jpeg_has_adobe_marker(data, len);
        const size_t npix = (size_t)w * h;
        for (size_t i = 0; i < npix; i++) {
            int c = buf[4 * i], m = buf[4 * i + 1], y = buf[4 * i + 2], k = buf[4 * i + 3];
            if (!inverted) { c = 255 - c; m = 255 - m; y = 255 - y; k = 255 - k; }
            buf[3 * i] = (uint8_t)((c * k + 127) / 255);
            buf[3 * i + 1] = (uint8_t)((m * k + 127) / 255);
            buf[3 * i + 2] = (uint8_t)((y * k + 127) / 255);
        }
    }
    *out = buf; *oh = h; *ow = w;
    buf = NULL;
    st = DMCP_OK;
done:
    free(buf);
    tjDestroy(tj);
    return st;
}

dmcp_status image_encode_jpeg(uint8_t **out, size_t *len, const uint8_t *img, int h, int w,
                              int quality)
{
    *out = NULL; *len = 0;
    if (h < 1 || w < 1 || quality < 1 || quality > 100) return DMCP_ERR_VALUE;
    tjhandle tj = tjInitCompress();
    if (!tj) return DMCP_ERR_NOMEM;
    unsigned long cap = tjBufSize(w, h, TJSAMP_420), size = cap;
    unsigned char *buf = (cap == (unsigned long)-1) ? NULL : malloc(cap);
    dmcp_status st = DMCP_ERR_NOMEM;
    if (buf) {
        if (tjCompress2(tj, img, w, 0, h, TJPF_RGB, &buf, &size, TJSAMP_420, quality,
                        TJFLAG_NOREALLOC) == 0) {
            *out = buf; *len = size;
            buf = NULL;
            st = DMCP_OK;
        } else {
            st = DMCP_ERR_VALUE;
        }
    }
    free(buf);
    tjDestroy(tj);
    return st;
}

/* ---------------------------------------------------------------- PNG */

typedef struct { const uint8_t *data; size_t len, pos; } png_source;

static void png_read_memory(png_structp png, png_bytep dst, png_size_t n)
{
    png_source *src = (png_source *)png_get_io_ptr(png);
    if (n > src->len - src->pos) png_error(png, "truncated");
    memcpy(dst, src->data + src->pos, n);
    src->pos += n;
}

static void png_on_error(png_structp png, png_const_charp msg)
{
    (void)msg;
    longjmp(png_jmpbuf(png), 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) { (void)png; (void)msg; }

static dmcp_status decode_png(uint8_t **out, int *oh, int *ow, const uint8_t *data, size_t len)
{
    png_source src = {data, len, 0};
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, NULL, png_on_error,
                                             png_on_warning);
    if (!png) return DMCP_ERR_NOMEM;
    png_infop info = png_create_info_struct(png);
    if (!info) { png_destroy_read_struct(&png, NULL, NULL); return DMCP_ERR_NOMEM; }
    uint8_t *volatile buf = NULL;
    png_bytep *volatile rows = NULL;
    volatile dmcp_status st = DMCP_ERR_VALUE;
    if (setjmp(png_jmpbuf(png))) goto done;
    png_set_read_fn(png, &src, png_read_memory);
    png_set_user_limits(png, 1u << 20, 1u << 20);
    png_read_info(png, info);
    const png_uint_32 w = png_get_image_width(png, info), h = png_get_image_height(png, info);
    const int color = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
    if (w < 1 || h < 1 || (double)w * h > (double)IMAGE_MAX_PIXELS) goto done;
    if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if ((color & PNG_COLOR_MASK_COLOR) == 0 && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (depth == 16) png_set_strip_16(png);
    png_set_strip_alpha(png);                 /* also drops a tRNS expanded to alpha */
    if ((color & PNG_COLOR_MASK_COLOR) == 0) png_set_gray_to_rgb(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    if (png_get_channels(png, info) != 3 || png_get_bit_depth(png, info) != 8 ||
        png_get_rowbytes(png, info) != (size_t)w * 3) goto done;
    buf = malloc((size_t)w * h * 3);
    rows = malloc(sizeof(png_bytep) * h);
    if (!buf || !rows) { st = DMCP_ERR_NOMEM; goto done; }
    for (png_uint_32 y = 0; y < h; y++) rows[y] = buf + (size_t)y * w * 3;
    png_read_image(png, rows);
    *out = buf; *oh = (int)h; *ow = (int)w;
    buf = NULL;
    st = DMCP_OK;
done:
    free(buf);
    free(rows);
    png_destroy_read_struct(&png, &info, NULL);
    return st;
}

dmcp_status image_decode(uint8_t **out, int *h, int *w, const uint8_t *data, size_t len)
{
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    *out = NULL; *h = 0; *w = 0;
    if (!data) return DMCP_ERR_VALUE;
    if (len >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF)
        return decode_jpeg(out, h, w, data, len);
    if (len >= 8 && memcmp(data, png_sig, 8) == 0)
        return decode_png(out, h, w, data, len);
    return DMCP_ERR_VALUE;
}

/* ---------------------------------------------------------------- resize */

/* OpenCV INTER_LINEAR source coordinate of destination index off+j along one
 * axis (src_n pixels resized to dst_n): index and weight of the next pixel. */
static void linear_coords(int *idx, float *frac, int n, int off, int src_n, int dst_n)
{
    const double scale = (double)src_n / dst_n;
    for (int j = 0; j < n; j++) {
        float f = (float)((off + j + 0.5) * scale - 0.5);
        int s = (int)floorf(f);
        f -= (float)s;
        if (s < 0) { s = 0; f = 0.0f; }
        if (s >= src_n - 1) { s = src_n - 1; f = 0.0f; }
        idx[j] = s;
        frac[j] = f;
    }
}

/* Vertical-then-horizontal: per output row, the two source rows of the crop
 * are blended into a float row (contiguous, vectorises), then each output
 * element gathers its two neighbours from it through precomputed offsets. */
static dmcp_status resize_crop(void *out, int to_u8, const uint8_t *inp, const resize_geom *g)
{
    if (g->c < 1 || g->crop_h < 1 || g->crop_w < 1 || g->rh < 1 || g->rw < 1 || g->oh < 1 ||
        g->ow < 1 || g->crop_y < 0 || g->crop_x < 0 || g->crop_y + g->crop_h > g->h ||
        g->crop_x + g->crop_w > g->w || g->oy < 0 || g->ox < 0 || g->oy + g->oh > g->rh ||
        g->ox + g->ow > g->rw)
        return DMCP_ERR_SHAPE;
    const int c = g->c, ow = g->ow, oh = g->oh, rowlen = ow * c;
    int *xi = malloc(sizeof(int) * (size_t)(ow + oh));
    float *xf = malloc(sizeof(float) * (size_t)(ow + oh));
    int *e0 = malloc(sizeof(int) * (size_t)rowlen * 2);
    float *ew = malloc(sizeof(float) * (size_t)rowlen);
    float *tmp = malloc(sizeof(float) * (size_t)g->crop_w * c);
    dmcp_status st = DMCP_ERR_NOMEM;
    if (!xi || !xf || !e0 || !ew || !tmp) goto done;
    int *yi = xi + ow, *e1 = e0 + rowlen;
    float *yf = xf + ow;
    linear_coords(xi, xf, ow, g->ox, g->crop_w, g->rw);
    linear_coords(yi, yf, oh, g->oy, g->crop_h, g->rh);
    /* only the crop columns [x_lo, x_hi) are read (a window may need fewer) */
    const int x_lo = xi[0], x_hi = xi[ow - 1] + 2 < g->crop_w ? xi[ow - 1] + 2 : g->crop_w;
    const size_t span = (size_t)(x_hi - x_lo) * c;
    for (int j = 0; j < ow; j++) {
        const int x1 = xi[j] + 1 < g->crop_w ? xi[j] + 1 : xi[j];
        for (int k = 0; k < c; k++) {
            e0[j * c + k] = (xi[j] - x_lo) * c + k;
            e1[j * c + k] = (x1 - x_lo) * c + k;
            ew[j * c + k] = xf[j];
        }
    }
    const size_t stride = (size_t)g->w * c;
    const uint8_t *base = inp + (size_t)g->crop_y * stride + (size_t)(g->crop_x + x_lo) * c;
    for (int i = 0; i < oh; i++) {
        const int y0 = yi[i], y1 = y0 + 1 < g->crop_h ? y0 + 1 : y0;
        const uint8_t *r0 = base + (size_t)y0 * stride, *r1 = base + (size_t)y1 * stride;
        const float f = yf[i];
        if (f == 0.0f)
            for (size_t e = 0; e < span; e++) tmp[e] = (float)r0[e];
        else
            for (size_t e = 0; e < span; e++)
                tmp[e] = (float)r0[e] + f * (float)((int)r1[e] - (int)r0[e]);
        if (to_u8) {
            uint8_t *o = (uint8_t *)out + (size_t)i * rowlen;
            for (int e = 0; e < rowlen; e++) {
                const float a = tmp[e0[e]];
                float v = a + ew[e] * (tmp[e1[e]] - a) + 0.5f;
                v = v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v);
                o[e] = (uint8_t)v;
            }
        } else {
            float *o = (float *)out + (size_t)i * rowlen;
            for (int e = 0; e < rowlen; e++) {
                const float a = tmp[e0[e]];
                o[e] = a + ew[e] * (tmp[e1[e]] - a);
            }
        }
    }
    st = DMCP_OK;
done:
    free(xi); free(xf); free(e0); free(ew); free(tmp);
    return st;
}

dmcp_status image_resize_crop_u8(uint8_t *out, const uint8_t *inp, const resize_geom *g)
{
    return resize_crop(out, 1, inp, g);
}

dmcp_status image_resize_crop_f32(float *out, const uint8_t *inp, const resize_geom *g)
{
    return resize_crop(out, 0, inp, g);
}

/* ---------------------------------------------------------------- flip */

void image_flip_horizontal(uint8_t *img, int h, int w, int c)
{
    for (int y = 0; y < h; y++) {
        uint8_t *row = img + (size_t)y * w * c;
        if (c == 3) {
            for (int l = 0, r = w - 1; l < r; l++, r--) {
                uint8_t *a = row + 3 * l, *b = row + 3 * r;
                const uint8_t t0 = a[0], t1 = a[1], t2 = a[2];
                a[0] = b[0]; a[1] = b[1]; a[2] = b[2];
                b[0] = t0; b[1] = t1; b[2] = t2;
            }
        } else if (c == 1) {
            for (int l = 0, r = w - 1; l < r; l++, r--) {
                const uint8_t t = row[l];
                row[l] = row[r];
                row[r] = t;
            }
        } else {
            for (int l = 0, r = w - 1; l < r; l++, r--)
                for (int k = 0; k < c; k++) {
                    const uint8_t t = row[l * c + k];
                    row[l * c + k] = row[r * c + k];
                    row[r * c + k] = t;
                }
        }
    }
}

/* ---------------------------------------------------------------- colour */

static inline float clamp255(float v)
{
    return v < 0.0f ? 0.0f : (v > 255.0f ? 255.0f : v);
}

/* trunc(0.2989 R + 0.587 G + 0.114 B) in float32: torchvision's rgb_to_grayscale
 * followed by .to(uint8) (the value is in [0, 255], so int truncation is the same). */
static inline int gray_of(const uint8_t *p)
{
    return (int)(0.2989f * (float)p[0] + 0.587f * (float)p[1] + 0.114f * (float)p[2]);
}

/* torchvision's _blend in float32: ratio*a + (1-ratio)*b, clamped, truncated.
 * Every value blended with the same `other` (vectorises; a 256-entry table
 * would compile to gathers, slower than the arithmetic on AMD cores). */
static void blend_with_constant(uint8_t *img, size_t n, float other, double factor)
{
    const float r = (float)factor, k = (float)(1.0 - factor) * other;
    for (size_t i = 0; i < n; i++) img[i] = (uint8_t)(int)clamp255(r * (float)img[i] + k);
}

void image_adjust_brightness(uint8_t *img, size_t npix, int c, double factor)
{
    blend_with_constant(img, npix * c, 0.0f, factor);
}

void image_adjust_contrast(uint8_t *img, size_t npix, int c, double factor)
{
    if (npix == 0) return;
    uint64_t sum = 0;               /* exact; int32 partial sums of 2^16 values cannot overflow */
    const size_t n = c == 3 ? npix : npix * c;
    for (size_t start = 0; start < n; start += 65536) {
        const size_t end = n - start < 65536 ? n : start + 65536;
        int32_t part = 0;
        if (c == 3)
            for (size_t i = start; i < end; i++) part += gray_of(img + 3 * i);
        else
            for (size_t i = start; i < end; i++) part += img[i];
        sum += (uint64_t)part;
    }
    const float mean = (float)((double)sum / (double)n);
    blend_with_constant(img, npix * c, mean, factor);
}

void image_adjust_saturation(uint8_t *img, size_t npix, int c, double factor)
{
    if (c != 3) return;
    const float r = (float)factor, inv = (float)(1.0 - factor);
    for (size_t i = 0; i < npix; i++) {
        uint8_t *p = img + 3 * i;
        const float g = inv * (float)gray_of(p);      /* (1 - f) * gray, as in _blend */
        const int v0 = (int)clamp255(r * (float)p[0] + g);
        const int v1 = (int)clamp255(r * (float)p[1] + g);
        const int v2 = (int)clamp255(r * (float)p[2] + g);
        p[0] = (uint8_t)v0; p[1] = (uint8_t)v1; p[2] = (uint8_t)v2;
    }
}

/* ---------------------------------------------------------------- pack */

/* c == 3: one pass over the pixels, three planes out; s0/s2 are constants
 * after inlining so the interleaved loads vectorise. */
static inline void pack3(float *restrict out, const uint8_t *restrict img, size_t hw,
                         const float *mean, const float *std, const int s0, const int s2)
{
    const float m0 = mean[0], m1 = mean[1], m2 = mean[2];
    const float d0 = std[0], d1 = std[1], d2 = std[2];
    float *restrict o0 = out, *restrict o1 = out + hw, *restrict o2 = out + 2 * hw;
    for (size_t i = 0; i < hw; i++) {
        o0[i] = ((float)img[3 * i + s0] - m0) / d0;
        o1[i] = ((float)img[3 * i + 1] - m1) / d1;
        o2[i] = ((float)img[3 * i + s2] - m2) / d2;
    }
}

void image_pack_chw(float *out, const uint8_t *img, int h, int w, int c,
                    const float *mean, const float *std, int swap)
{
    const size_t hw = (size_t)h * w;
    if (c == 3) {
        if (swap) pack3(out, img, hw, mean, std, 2, 0);
        else pack3(out, img, hw, mean, std, 0, 2);
        return;
    }
    for (int k = 0; k < c; k++) {
        const int s = swap ? c - 1 - k : k;
        const float m = mean[k], sd = std[k];
        float *o = out + (size_t)k * hw;
        const uint8_t *p = img + s;
        for (size_t i = 0; i < hw; i++) o[i] = ((float)p[i * c] - m) / sd;
    }
}
