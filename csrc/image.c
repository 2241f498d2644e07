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

/* One source row interpolated horizontally into dst (ow * c floats). */
static void resize_hrow(float *dst, const uint8_t *row, const int *xi, const float *xf,
                        int ow, int c, int src_w)
{
    for (int j = 0; j < ow; j++) {
        const uint8_t *a = row + (size_t)xi[j] * c;
        const uint8_t *b = xi[j] + 1 < src_w ? a + c : a;
        const float f = xf[j];
        for (int k = 0; k < c; k++) dst[j * c + k] = a[k] + f * (float)(b[k] - a[k]);
    }
}

static dmcp_status resize_crop(void *out, int to_u8, const uint8_t *inp, const resize_geom *g)
{
    if (g->c < 1 || g->crop_h < 1 || g->crop_w < 1 || g->rh < 1 || g->rw < 1 || g->oh < 1 ||
        g->ow < 1 || g->crop_y < 0 || g->crop_x < 0 || g->crop_y + g->crop_h > g->h ||
        g->crop_x + g->crop_w > g->w || g->oy < 0 || g->ox < 0 || g->oy + g->oh > g->rh ||
        g->ox + g->ow > g->rw)
        return DMCP_ERR_SHAPE;
    const int c = g->c, ow = g->ow, rowlen = ow * c;
    int *xi = malloc(sizeof(int) * (size_t)(ow + g->oh));
    float *xf = malloc(sizeof(float) * (size_t)(ow + g->oh));
    float *rows = malloc(sizeof(float) * (size_t)rowlen * 2);
    if (!xi || !xf || !rows) { free(xi); free(xf); free(rows); return DMCP_ERR_NOMEM; }
    int *yi = xi + ow;
    float *yf = xf + ow, *A = rows, *B = rows + rowlen;  /* rows y0 and y1, horizontally done */
    linear_coords(xi, xf, ow, g->ox, g->crop_w, g->rw);
    linear_coords(yi, yf, g->oh, g->oy, g->crop_h, g->rh);
    const size_t stride = (size_t)g->w * c;
    const uint8_t *base = inp + (size_t)g->crop_y * stride + (size_t)g->crop_x * c;
    int ya = -1, yb = -1;
    for (int i = 0; i < g->oh; i++) {
        const int y0 = yi[i], y1 = y0 + 1 < g->crop_h ? y0 + 1 : y0;
        if (ya != y0) {
            if (yb == y0) {
                float *t = A; A = B; B = t;
                ya = yb; yb = -1;
            } else {
                resize_hrow(A, base + (size_t)y0 * stride, xi, xf, ow, c, g->crop_w);
                ya = y0;
            }
        }
        if (yb != y1) {
            resize_hrow(B, base + (size_t)y1 * stride, xi, xf, ow, c, g->crop_w);
            yb = y1;
        }
        const float f = yf[i];
        if (to_u8) {
            uint8_t *o = (uint8_t *)out + (size_t)i * rowlen;
            for (int k = 0; k < rowlen; k++) {
                float v = A[k] + f * (B[k] - A[k]) + 0.5f;
                o[k] = v >= 255.0f ? 255 : (v <= 0.0f ? 0 : (uint8_t)v);
            }
        } else {
            float *o = (float *)out + (size_t)i * rowlen;
            for (int k = 0; k < rowlen; k++) o[k] = A[k] + f * (B[k] - A[k]);
        }
    }
    free(xi); free(xf); free(rows);
    return DMCP_OK;
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
        for (int l = 0, r = w - 1; l < r; l++, r--)
            for (int k = 0; k < c; k++) {
                uint8_t t = row[l * c + k];
                row[l * c + k] = row[r * c + k];
                row[r * c + k] = t;
            }
    }
}

/* ---------------------------------------------------------------- colour */

/* torchvision's _blend in float32: ratio*a + (1-ratio)*b, clamp, truncate. */
static inline uint8_t blend(float a, float b, float ratio, float inv)
{
    float v = ratio * a + inv * b;
    return v >= 255.0f ? 255 : (v <= 0.0f ? 0 : (uint8_t)v);
}

static inline uint8_t gray_u8(const uint8_t *p)
{
    float v = 0.2989f * (float)p[0] + 0.587f * (float)p[1] + 0.114f * (float)p[2];
    return (uint8_t)v;          /* v in [0, 255]: torchvision's .to(uint8) truncation */
}

void image_adjust_brightness(uint8_t *img, size_t npix, int c, double factor)
{
    const float r = (float)factor, inv = (float)(1.0 - factor);
    const size_t n = npix * c;
    for (size_t i = 0; i < n; i++) img[i] = blend(img[i], 0.0f, r, inv);
}

void image_adjust_contrast(uint8_t *img, size_t npix, int c, double factor)
{
    if (npix == 0) return;
    double sum = 0.0;
    if (c == 3)
        for (size_t i = 0; i < npix; i++) sum += gray_u8(img + 3 * i);
    else
        for (size_t i = 0; i < npix * c; i++) sum += img[i];
    const float mean = (float)(sum / (double)(c == 3 ? npix : npix * c));
    const float r = (float)factor, inv = (float)(1.0 - factor);
    const size_t n = npix * c;
    for (size_t i = 0; i < n; i++) img[i] = blend(img[i], mean, r, inv);
}

void image_adjust_saturation(uint8_t *img, size_t npix, int c, double factor)
{
    if (c != 3) return;
    const float r = (float)factor, inv = (float)(1.0 - factor);
    for (size_t i = 0; i < npix; i++) {
        uint8_t *p = img + 3 * i;
        const float g = gray_u8(p);
        p[0] = blend(p[0], g, r, inv);
        p[1] = blend(p[1], g, r, inv);
        p[2] = blend(p[2], g, r, inv);
    }
}

/* ---------------------------------------------------------------- pack */

void image_pack_chw(float *out, const uint8_t *img, int h, int w, int c,
                    const float *mean, const float *std, int swap)
{
    const size_t hw = (size_t)h * w;
    for (int k = 0; k < c; k++) {
        const int s = swap ? c - 1 - k : k;
        const float m = mean[k], sd = std[k];
        float *o = out + (size_t)k * hw;
        const uint8_t *p = img + s;
        for (size_t i = 0; i < hw; i++) o[i] = ((float)p[i * c] - m) / sd;
    }
}
