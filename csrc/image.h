/* image.h: decoding and augmentation kernels of the data pipeline.
 *
 * Images are HWC uint8 (channels innermost, rows contiguous).  The kernels
 * are single-threaded on purpose: the loader runs several images at once on
 * its own threads, and the model's OpenMP/BLAS threads must not be
 * oversubscribed by a second threading level. */
#ifndef DMCP_IMAGE_H
#define DMCP_IMAGE_H

#include "common.h"

/* Largest image decoded (PIL's decompression-bomb limit, 2 x 89.5 Mpixels). */
#define IMAGE_MAX_PIXELS 178956970L

/* data (len bytes, a JPEG or PNG file) -> *out (h, w, 3) RGB, malloc'd, to be
 * released with free().  Grayscale, palette, alpha, 16-bit and CMYK inputs
 * become 8-bit RGB (alpha dropped, as PIL's convert('RGB')).  Corrupt,
 * truncated or unsupported data gives DMCP_ERR_VALUE and *out == NULL. */
dmcp_status image_decode(uint8_t **out, int *h, int *w, const uint8_t *data, size_t len);

/* img (h, w, 3) RGB -> *out (*len bytes) baseline JPEG 4:2:0 at quality 1..100,
 * malloc'd (free() it).  For tests and benchmarks that need JPEG files. */
dmcp_status image_encode_jpeg(uint8_t **out, size_t *len, const uint8_t *img, int h, int w,
                              int quality);

/* Bilinear resize of a crop, OpenCV INTER_LINEAR conventions (half-pixel
 * centres, edge clamp inside the crop, no antialiasing), as mmcv.imresize.
 * The crop (crop_y, crop_x, crop_h, crop_w) of inp (h, w, c) is resized to
 * (rh, rw); the window (oy, ox, oh, ow) of that resized image is written to
 * out (oh, ow, c).  A plain resize is crop = whole image, window = whole. */
typedef struct {
    int h, w, c;
    int crop_y, crop_x, crop_h, crop_w;
    int rh, rw;
    int oy, ox, oh, ow;
} resize_geom;

/* out uint8: rounded to nearest; out float: unrounded. */
dmcp_status image_resize_crop_u8(uint8_t *out, const uint8_t *inp, const resize_geom *g);
dmcp_status image_resize_crop_f32(float *out, const uint8_t *inp, const resize_geom *g);

/* img (h, w, c) mirrored left-right, in place. */
void image_flip_horizontal(uint8_t *img, int h, int w, int c);

/* torchvision's adjust_brightness / adjust_contrast / adjust_saturation on a
 * uint8 image of npix pixels with c = 1 (gray) or 3 (RGB) channels, in place:
 * blend with black, with the mean of the grayscale image, with the grayscale
 * image, by `factor` (>= 0): factor*img + (1-factor)*other in float32, clamped
 * to [0, 255] and truncated.  Grayscale is trunc(0.2989 R + 0.587 G + 0.114 B)
 * (the image itself when c == 1; saturation leaves gray images unchanged). */
void image_adjust_brightness(uint8_t *img, size_t npix, int c, double factor);
void image_adjust_contrast(uint8_t *img, size_t npix, int c, double factor);
void image_adjust_saturation(uint8_t *img, size_t npix, int c, double factor);

/* img (h, w, c) uint8 -> out (c, h, w) float32, out[k] = (img[..., s] - mean[k]) / std[k]
 * with s = c-1-k when swap (BGR <-> RGB) else k.  out is one slot of an NCHW batch. */
void image_pack_chw(float *out, const uint8_t *img, int h, int w, int c,
                    const float *mean, const float *std, int swap);

#endif
