"""Data: datasets, transforms and a threaded loader, configured like mmcls 1.x.

    loader = build_dataloader(cfg.train_dataloader, cfg.data_preprocessor, seed=2020)
    loader.set_epoch(epoch)
    for images, labels in loader:        # float32 (N, C, H, W), int64 (N,)
        ...

Images travel through a pipeline as HWC uint8 RGB arrays; the heavy steps
(JPEG/PNG decode, bilinear resized crop, flip, colour jitter, the normalising
CHW pack) are C kernels of ``dmcp._C`` that release the GIL, so the loader's
worker threads decode in parallel while the model trains.

Channel order follows mmcls exactly as seen by the model: mmcls decodes files
to BGR (OpenCV) and keeps CIFAR in RGB, and ``data_preprocessor.to_rgb`` swaps
the channels before normalising.  Here images are always decoded to RGB and the
pack step swaps only when mmcls would hand the model BGR, so ``mean``/``std``
are read in the same (output) order as in mmcls configs.

Randomness is per sample: every random transform draws from a NumPy Generator
keyed by (seed, epoch, dataset index), so a batch is the same whatever the
number of worker threads or the order in which they run.
"""
import collections
import gzip
import math
import numbers
import os
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import _C
from .config import UserError, build, check_keys as _check_keys, signature_keys, strip_scope

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
_MASK64 = (1 << 64) - 1


# ---------------------------------------------------------------------------
# config helpers
# ---------------------------------------------------------------------------

# types that are not transforms here: dmcp normalises in data_preprocessor
_NOT_TRANSFORMS = ("Normalize", "ToTensor", "ImageToTensor", "Collect", "ToNumpy")


def _build_transform(cfg, where):
    kind = strip_scope(cfg.get("type")) if isinstance(cfg, dict) else None
    if kind in _NOT_TRANSFORMS:
        raise UserError(f"{where}: transform type {kind!r} is not one dmcp runs (normalisation "
                        f"belongs in data_preprocessor)")
    return build(TRANSFORMS, cfg, where, what="transform")


def _pair(value, where, name, positive=True):
    """An int or a 2-sequence of ints -> tuple of two ints."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (int(value), int(value))
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value)):
        raise UserError(f"{where}: {name} must be an int or a pair of ints, got {value!r}")
    if positive and min(value) < 1:
        raise UserError(f"{where}: {name} must be positive, got {value!r}")
    return int(value[0]), int(value[1])


def _range(value, where, name, low=0.0):
    if (not isinstance(value, (tuple, list)) or len(value) != 2
            or not all(isinstance(v, numbers.Real) for v in value)
            or not low <= value[0] <= value[1]):
        raise UserError(f"{where}: {name} must be a (min, max) pair with {low} <= min <= max, "
                        f"got {value!r}")
    return float(value[0]), float(value[1])


# ---------------------------------------------------------------------------
# per-sample randomness
# ---------------------------------------------------------------------------

_tls = threading.local()


def _keyed_generator():
    """This thread's (Generator, state dict) pair, re-keyed per sample."""
    pair = getattr(_tls, "pair", None)
    if pair is None:
        gen = np.random.Generator(np.random.Philox(0))
        pair = _tls.pair = (gen, gen.bit_generator.state)
    return pair


def sample_rng(seed, epoch, index):
    """The Generator of one sample: the same stream as
    Generator(Philox(key=[seed, epoch << 32 | index])), by re-keying one
    Generator per thread (7 us instead of 40 us for a new one); the returned
    object is valid until the same thread asks again."""
    gen, state = _keyed_generator()
    key = state["state"]["key"]
    key[0] = int(seed) & _MASK64
    key[1] = ((int(epoch) & 0xFFFFFFFF) << 32) | (int(index) & 0xFFFFFFFF)
    state["state"]["counter"][:] = 0
    state["buffer_pos"], state["has_uint32"], state["uinteger"] = 4, 0, 0
    gen.bit_generator.state = state
    return gen


def sample_uniforms(seed, epoch, indices, count):
    """(len(indices), count) float64 uniforms in [0, 1): row i is
    sample_rng(seed, epoch, indices[i]).random(count), so it does not depend on
    the batch, the thread or the order of work."""
    out = np.empty((len(indices), count))
    if count:
        for k, i in enumerate(indices):
            sample_rng(seed, epoch, i).random(count, out=out[k])
    return out


def _below(u, n):
    """floor(u * n) as ints in [0, n - 1] (u uniform in [0, 1))."""
    return np.minimum((u * n).astype(np.int64), np.asarray(n) - 1)


# ---------------------------------------------------------------------------
# transforms
# ---------------------------------------------------------------------------
# A transform consumes `n_random` uniforms per sample: params(U (N, n_random),
# shape) -> per-sample parameters, vectorised over the batch; apply(img, p)
# transforms one image, apply_batch(imgs (N,H,W,C), P) a batch of one size;
# out_shape(shape) tells the output size (None: unknown).  Shapes are (H, W, C).
# The single-image path calls params() with one row, so both paths agree.

class _Transform:
    n_random = 0
    batched = False                 # has a vectorised apply_batch

    def params(self, U, shape):
        return [None] * len(U)

    def out_shape(self, shape):
        return shape

    def apply_batch(self, imgs, params):
        return np.stack([self.apply(img, p) for img, p in zip(imgs, params)])


class LoadImageFromFile(_Transform):
    """Marks where files are decoded (datasets of files always decode first)."""
    batched = True

    def __init__(self, where="LoadImageFromFile", to_float32=False, color_type="color",
                 imdecode_backend="cv2", file_client_args=None, backend_args=None,
                 ignore_empty=False):
        if to_float32:
            raise UserError(f"{where}: to_float32=True is not supported (images stay uint8 "
                            "until data_preprocessor normalises them)")
        if color_type != "color":
            raise UserError(f"{where}: color_type {color_type!r} is not supported (only 'color')")

    def apply(self, img, params):
        return img

    def apply_batch(self, imgs, params):
        return imgs


class PackClsInputs(LoadImageFromFile):
    """No-op marker: batches are packed by the loader."""

    def __init__(self, where="PackClsInputs", meta_keys=None, algorithm_keys=None):
        pass


def _resize(img, h, w):
    out = np.empty((h, w, img.shape[2]), np.uint8)
    _C.resize_crop(out, img, 0, 0, img.shape[0], img.shape[1])
    return out


class RandomResizedCrop(_Transform):
    """mmcls's: a random area/aspect crop (max_attempts tries, then a centred
    fallback), resized bilinearly to `scale` (h, w)."""

    def __init__(self, scale, where="RandomResizedCrop", crop_ratio_range=(0.08, 1.0),
                 aspect_ratio_range=(3. / 4., 4. / 3.), max_attempts=10,
                 interpolation="bilinear", backend="cv2"):
        self.scale = _pair(scale, where, "scale")
        self.crop_ratio_range = _range(crop_ratio_range, where, "crop_ratio_range")
        lo, hi = _range(aspect_ratio_range, where, "aspect_ratio_range")
        if lo <= 0:
            raise UserError(f"{where}: aspect_ratio_range must be positive, "
                            f"got {aspect_ratio_range!r}")
        self.aspect_ratio_range = (lo, hi)
        self.log_ratio = (math.log(lo), math.log(hi))
        if not isinstance(max_attempts, numbers.Integral) or max_attempts < 0:
            raise UserError(f"{where}: max_attempts must be an int >= 0, got {max_attempts!r}")
        self.max_attempts = int(max_attempts)
        self.n_random = 2 * self.max_attempts + 2
        if interpolation != "bilinear":
            raise UserError(f"{where}: interpolation {interpolation!r} is not supported "
                            "(only 'bilinear')")

    def fallback(self, h, w):
        lo, hi = self.aspect_ratio_range
        if w / h < lo:
            tw, th = w, int(round(w / lo))
        elif w / h > hi:
            th, tw = h, int(round(h * hi))
        else:
            th, tw = h, w
        th, tw = max(1, min(th, h)), max(1, min(tw, w))
        return (h - th) // 2, (w - tw) // 2, th, tw

    def params(self, U, shape):
        """(N, 4) rows (y, x, crop_h, crop_w): attempt a reads U[:, 2a] (area)
        and U[:, 2a+1] (log aspect); the offsets read the last two columns.
        A scalar loop: one row is the loader's hot path, NumPy calls cost more."""
        h, w = int(shape[0]), int(shape[1])
        A = self.max_attempts
        lo, hi = self.crop_ratio_range
        l0, l1 = self.log_ratio
        out = np.empty((len(U), 4), np.int64)
        for k, u in enumerate(U.tolist()):
            for a in range(A):
                area = (lo + (hi - lo) * u[2 * a]) * (h * w)
                aspect = math.exp(l0 + (l1 - l0) * u[2 * a + 1])
                tw = int(round(math.sqrt(area * aspect)))
                th = int(round(math.sqrt(area / aspect)))
                if 0 < tw <= w and 0 < th <= h:
                    out[k] = (min(int(u[2 * A] * (h - th + 1)), h - th),
                              min(int(u[2 * A + 1] * (w - tw + 1)), w - tw), th, tw)
                    break
            else:
                out[k] = self.fallback(h, w)
        return out

    def apply(self, img, params):
        y, x, th, tw = (int(v) for v in params)
        out = np.empty((self.scale[0], self.scale[1], img.shape[2]), np.uint8)
        _C.resize_crop(out, img, y, x, th, tw)
        return out

    def out_shape(self, shape):
        return (self.scale[0], self.scale[1], shape[2])


class ResizeEdge(_Transform):
    """mmcls's: resize so the chosen edge ('short', 'long', 'width', 'height') is `scale`."""

    def __init__(self, scale, where="ResizeEdge", edge="short", backend="cv2",
                 interpolation="bilinear"):
        if not isinstance(scale, numbers.Integral) or scale < 1:
            raise UserError(f"{where}: scale must be a positive int, got {scale!r}")
        if edge not in ("short", "long", "width", "height"):
            raise UserError(f"{where}: edge must be 'short', 'long', 'width' or 'height', "
                            f"got {edge!r}")
        if interpolation != "bilinear":
            raise UserError(f"{where}: interpolation {interpolation!r} is not supported "
                            "(only 'bilinear')")
        self.scale, self.edge = int(scale), edge

    def size(self, h, w):
        if (self.edge == "short" and w < h) or (self.edge == "long" and w > h) \
                or self.edge == "width":
            return max(1, int(self.scale * h / w)), self.scale
        return self.scale, max(1, int(self.scale * w / h))

    def apply(self, img, params):
        return _resize(img, *self.size(img.shape[0], img.shape[1]))

    def out_shape(self, shape):
        if shape[0] is None or shape[1] is None:
            if self.edge == "width":
                return (None, self.scale, shape[2])
            if self.edge == "height":
                return (self.scale, None, shape[2])
            return (None, None, shape[2])
        return self.size(shape[0], shape[1]) + (shape[2],)


class Resize(_Transform):
    """mmcv's: resize to `scale` (w, h), or within it keeping the ratio."""

    def __init__(self, scale, where="Resize", keep_ratio=False, interpolation="bilinear",
                 backend="cv2", clip_object_border=True):
        self.w, self.h = _pair(scale, where, "scale")
        self.keep_ratio = bool(keep_ratio)
        if interpolation != "bilinear":
            raise UserError(f"{where}: interpolation {interpolation!r} is not supported "
                            "(only 'bilinear')")

    def size(self, h, w):
        if not self.keep_ratio:
            return self.h, self.w
        f = min(max(self.h, self.w) / max(h, w), min(self.h, self.w) / min(h, w))
        return max(1, int(h * f + 0.5)), max(1, int(w * f + 0.5))

    def apply(self, img, params):
        return _resize(img, *self.size(img.shape[0], img.shape[1]))

    def out_shape(self, shape):
        if not self.keep_ratio:
            return (self.h, self.w, shape[2])
        if shape[0] is None or shape[1] is None:
            return (None, None, shape[2])
        return self.size(shape[0], shape[1]) + (shape[2],)


class CenterCrop(_Transform):
    """mmcv's: a centred crop of crop_size (w, h); auto_pad pads small images
    at the bottom/right first, otherwise the crop shrinks to the image."""
    batched = True

    def __init__(self, crop_size, where="CenterCrop", auto_pad=False, pad_cfg=None,
                 clip_object_border=True):
        self.cw, self.ch = _pair(crop_size, where, "crop_size")
        self.auto_pad = bool(auto_pad)
        self.pad_val = 0
        if pad_cfg is not None:
            if not isinstance(pad_cfg, dict):
                raise UserError(f"{where}: pad_cfg must be a dict, got {pad_cfg!r}")
            pc = dict(pad_cfg)
            pc.pop("type", None)
            _check_keys(f"{where} pad_cfg", pc, ("pad_val", "padding_mode"))
            pv = pc.get("pad_val", 0)
            self.pad_val = pv.get("img", 0) if isinstance(pv, dict) else pv

    def window(self, h, w):
        """(y, x, crop_h, crop_w, padded_h, padded_w) for an h x w image."""
        ch, cw = self.ch, self.cw
        if not self.auto_pad:
            ch, cw = min(ch, h), min(cw, w)
        else:
            h, w = max(h, ch), max(w, cw)
        return max(0, int(round((h - ch) / 2.))), max(0, int(round((w - cw) / 2.))), ch, cw, h, w

    def apply(self, img, params):
        return self.apply_batch(img[None], None)[0]

    def apply_batch(self, imgs, params):
        h, w = imgs.shape[1], imgs.shape[2]
        y, x, ch, cw, ph, pw = self.window(h, w)
        if (ph, pw) != (h, w):
            imgs = np.pad(imgs, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)),
                          constant_values=self.pad_val)
        return np.ascontiguousarray(imgs[:, y:y + ch, x:x + cw])

    def out_shape(self, shape):
        """Images of unknown size are taken to be at least the crop size."""
        if self.auto_pad:
            return (self.ch, self.cw, shape[2])
        h = self.ch if shape[0] is None else min(self.ch, shape[0])
        w = self.cw if shape[1] is None else min(self.cw, shape[1])
        return (h, w, shape[2])


class _ResizeEdgeCenterCrop(_Transform):
    """ResizeEdge then CenterCrop in one resize_crop call: only the kept
    window of the resized image is computed (the same pixels)."""

    def __init__(self, resize, crop):
        self.resize, self.crop = resize, crop

    def apply(self, img, params):
        rh, rw = self.resize.size(img.shape[0], img.shape[1])
        if self.crop.ch > rh or self.crop.cw > rw:
            return self.crop.apply(self.resize.apply(img, None), None)
        y, x, ch, cw, _, _ = self.crop.window(rh, rw)
        out = np.empty((ch, cw, img.shape[2]), np.uint8)
        _C.resize_crop(out, img, 0, 0, img.shape[0], img.shape[1], rh, rw, y, x)
        return out

    def out_shape(self, shape):
        return self.crop.out_shape(self.resize.out_shape(shape))


class RandomFlip(_Transform):
    """mmcv's: flip with probability `prob` ('horizontal', 'vertical' or 'diagonal')."""
    n_random = 1
    batched = True

    def __init__(self, where="RandomFlip", prob=0.5, direction="horizontal"):
        if not isinstance(prob, numbers.Real) or not 0.0 <= prob <= 1.0:
            raise UserError(f"{where}: prob must be a number in [0, 1], got {prob!r}")
        if direction not in ("horizontal", "vertical", "diagonal"):
            raise UserError(f"{where}: direction must be 'horizontal', 'vertical' or 'diagonal', "
                            f"got {direction!r}")
        self.prob, self.direction = float(prob), direction

    def params(self, U, shape):
        return U[:, 0] < self.prob

    def apply(self, img, flip):
        if not flip:
            return img
        if self.direction != "vertical":
            img = np.array(img)             # own, writable copy
            _C.flip_horizontal(img)
        if self.direction != "horizontal":
            img = np.ascontiguousarray(img[::-1])
        return img

    def apply_batch(self, imgs, flip):
        if flip.any():
            imgs = np.array(imgs)
            sub = imgs[flip]
            if self.direction != "vertical":
                sub = sub[:, :, ::-1]
            if self.direction != "horizontal":
                sub = sub[:, ::-1]
            imgs[flip] = sub
        return imgs


class RandomCrop(_Transform):
    """mmcls's: optional padding (left, top, right, bottom), then a random
    crop of crop_size (h, w)."""
    n_random = 2
    batched = True

    def __init__(self, crop_size, where="RandomCrop", padding=None, pad_if_needed=False,
                 pad_val=0, padding_mode="constant"):
        self.ch, self.cw = _pair(crop_size, where, "crop_size")
        if padding is None:
            self.pad = (0, 0, 0, 0)
        elif isinstance(padding, numbers.Integral) and padding >= 0:
            self.pad = (int(padding),) * 4
        elif isinstance(padding, (tuple, list)) and len(padding) in (2, 4) \
                and all(isinstance(p, numbers.Integral) and p >= 0 for p in padding):
            self.pad = tuple(int(p) for p in (padding if len(padding) == 4 else padding * 2))
        else:
            raise UserError(f"{where}: padding must be an int >= 0 or a 2/4-tuple "
                            f"(left, top[, right, bottom]), got {padding!r}")
        if padding_mode not in ("constant", "edge", "reflect", "symmetric"):
            raise UserError(f"{where}: padding_mode must be 'constant', 'edge', 'reflect' or "
                            f"'symmetric', got {padding_mode!r}")
        if not isinstance(pad_val, numbers.Real):
            raise UserError(f"{where}: pad_val must be a number, got {pad_val!r}")
        self.pad_if_needed, self.pad_val, self.mode = bool(pad_if_needed), pad_val, padding_mode

    def pad_widths(self, h, w):
        """((top, bottom), (left, right)) padding of an h x w image."""
        left, top, right, bottom = self.pad
        if self.pad_if_needed:
            hp = math.ceil(max(0, self.ch - (h + top + bottom)) / 2)
            wp = math.ceil(max(0, self.cw - (w + left + right)) / 2)
            top, bottom, left, right = top + hp, bottom + hp, left + wp, right + wp
        return (top, bottom), (left, right)

    def params(self, U, shape):
        (t, b), (l, r) = self.pad_widths(shape[0], shape[1])
        h, w = shape[0] + t + b, shape[1] + l + r
        th, tw = min(h, self.ch), min(w, self.cw)
        return np.stack([_below(U[:, 0], h - th + 1), _below(U[:, 1], w - tw + 1)], 1)

    def apply(self, img, params):
        return self.apply_batch(img[None], np.asarray(params).reshape(1, 2))[0]

    def apply_batch(self, imgs, params):
        hw, ww = self.pad_widths(imgs.shape[1], imgs.shape[2])
        if any(hw + ww):
            widths = ((0, 0), hw, ww, (0, 0))
            imgs = (np.pad(imgs, widths, constant_values=self.pad_val) if self.mode == "constant"
                    else np.pad(imgs, widths, mode=self.mode))
        th, tw = min(imgs.shape[1], self.ch), min(imgs.shape[2], self.cw)
        if (th, tw) == imgs.shape[1:3]:
            return imgs
        out = np.empty((len(imgs), th, tw, imgs.shape[3]), np.uint8)
        for k, (y, x) in enumerate(params.tolist()):
            out[k] = imgs[k, y:y + th, x:x + tw]
        return out

    def out_shape(self, shape):
        if shape[0] is None or shape[1] is None:
            return (self.ch, self.cw, shape[2]) if self.pad_if_needed else (None, None, shape[2])
        (t, b), (l, r) = self.pad_widths(shape[0], shape[1])
        return (min(shape[0] + t + b, self.ch), min(shape[1] + l + r, self.cw), shape[2])


class ColorJitter(_Transform):
    """mmcls's (torchvision's adjust_* on uint8): brightness, contrast and
    saturation factors drawn uniformly, applied in a random order."""
    n_random = 7                    # 4 for the order (as mmcls, hue's slot unused), 3 factors

    def __init__(self, where="ColorJitter", brightness=0., contrast=0., saturation=0., hue=0.,
                 backend="pillow"):
        self.ranges = [self._range(v, where, n) for v, n in
                       ((brightness, "brightness"), (contrast, "contrast"),
                        (saturation, "saturation"))]
        if hue not in (0, 0.0, (0, 0), [0, 0], None):
            raise UserError(f"{where}: hue jitter is not supported (hue must be 0, got {hue!r})")

    @staticmethod
    def _range(value, where, name):
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            if value < 0:
                raise UserError(f"{where}: {name} must be >= 0, got {value!r}")
            value = (max(0.0, 1.0 - value), 1.0 + value)
        if (not isinstance(value, (tuple, list)) or len(value) != 2
                or not all(isinstance(v, numbers.Real) for v in value) or value[0] > value[1]):
            raise UserError(f"{where}: {name} must be a number >= 0 or a (min, max) pair, "
                            f"got {value!r}")
        lo, hi = max(0.0, float(value[0])), max(0.0, float(value[1]))
        return None if lo == hi == 1.0 else (lo, hi)

    def params(self, U, shape):
        """(N, 7) rows: the order of ops 0..3 (3, hue, unused), then 3 factors."""
        out = np.empty((len(U), 7))
        out[:, :4] = np.argsort(U[:, :4], axis=1, kind="stable")
        for k, r in enumerate(self.ranges):
            out[:, 4 + k] = 1.0 if r is None else r[0] + (r[1] - r[0]) * U[:, 4 + k]
        return out

    def apply(self, img, p):
        img = np.array(img)
        _C.color_jitter(img, p[4], p[5], p[6], "".join("bcs"[int(i)] for i in p[:4] if i < 3))
        return img


TRANSFORMS = {c.__name__: c for c in (
    LoadImageFromFile, RandomResizedCrop, ResizeEdge, Resize, CenterCrop, RandomFlip,
    RandomCrop, ColorJitter, PackClsInputs)}
TRANSFORMS["PackInputs"] = PackClsInputs          # mmpretrain's name


class Pipeline:
    """A list of transforms built from config dicts (ResizeEdge + CenterCrop fused)."""

    def __init__(self, cfgs, where="pipeline"):
        if cfgs is None:
            cfgs = []
        if not isinstance(cfgs, (list, tuple)):
            raise UserError(f"{where}: expected a list of transform dicts, got {cfgs!r}")
        built = [_build_transform(c, f"{where}[{i}]") for i, c in enumerate(cfgs)]
        self.transforms = []
        for t in built:
            if (isinstance(t, CenterCrop) and self.transforms
                    and isinstance(self.transforms[-1], ResizeEdge)):
                self.transforms[-1] = _ResizeEdgeCenterCrop(self.transforms[-1], t)
            elif not isinstance(t, LoadImageFromFile):          # markers
                self.transforms.append(t)
        self.n_random = sum(t.n_random for t in self.transforms)
        self.batched = all(t.batched for t in self.transforms)

    def _split(self, U):
        at = 0
        for t in self.transforms:
            yield t, U[:, at:at + t.n_random]
            at += t.n_random

    def __call__(self, img, u=None):
        """One HWC uint8 image through the pipeline; u: its n_random uniforms
        (sample_uniforms), or a Generator to draw them from."""
        if u is None or isinstance(u, np.random.Generator):
            u = (u or np.random.default_rng()).random(self.n_random)
        for t, Ut in self._split(np.asarray(u, np.float64).reshape(1, -1)):
            img = t.apply(img, t.params(Ut, img.shape)[0])
        return img

    def run_batch(self, imgs, U):
        """imgs (N, H, W, C) of one size, U (N, n_random) -> the batch transformed."""
        for t, Ut in self._split(U):
            imgs = t.apply_batch(imgs, t.params(Ut, imgs.shape[1:]))
        return imgs

    def out_shape(self, shape):
        for t in self.transforms:
            shape = t.out_shape(shape)
        return shape


def build_pipeline(cfgs, where="pipeline"):
    return Pipeline(cfgs, where)


# ---------------------------------------------------------------------------
# datasets
# ---------------------------------------------------------------------------

class _Dataset:
    """Common part: labels, `indices` subset, the pipeline, corrupt-file policy.

    Subclasses set self.labels (int64) and either self.images (N, H, W, C)
    uint8 (in memory) or self.load(i) -> HWC uint8 RGB."""
    channel_order = "rgb"           # the order mmcls's pipeline would hold
    images = None
    classes = None

    def _setup(self, where, pipeline, indices, skip_corrupt=False, max_refetch=1000):
        self.where = where
        self.pipeline = Pipeline(pipeline, f"{where} pipeline")
        self.skip_corrupt = bool(skip_corrupt)
        self.max_refetch = int(max_refetch)
        self._warned = set()
        self._warn_lock = threading.Lock()
        return self

    def _subset(self, n, indices):
        """Positions kept by mmengine's `indices` (int: first N, negative: last N; or a list)."""
        if indices is None:
            return None
        if isinstance(indices, numbers.Integral) and not isinstance(indices, bool):
            return np.arange(n)[:indices] if indices >= 0 else np.arange(n)[indices:]
        if isinstance(indices, (list, tuple)) and all(
                isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in indices):
            idx = np.asarray(indices, np.int64)
            if idx.size and (idx.min() < -n or idx.max() >= n):
                raise UserError(f"{self.where}: indices outside the {n} samples")
            return idx % n if n else idx
        raise UserError(f"{self.where}: indices must be an int or a list of ints, got {indices!r}")

    def _check_nonempty(self, what):
        if len(self.labels) == 0:
            raise UserError(f"{self.where}: no samples in {what}")

    @property
    def in_memory(self):
        return self.images is not None

    @property
    def base_shape(self):
        """(H, W, C) of the images before the pipeline (None: varies)."""
        return self.images.shape[1:] if self.in_memory else (None, None, 3)

    def __len__(self):
        return len(self.labels)

    def load(self, i):
        return self.images[i]

    def sample(self, i, seed=0, epoch=0):
        """(pipeline output HWC uint8, label) of sample i; a corrupt file is
        replaced by the next sample when skip_corrupt is set."""
        j = int(i)
        for _ in range(max(1, self.max_refetch)):
            try:
                img = self.load(j)
                break
            except _CorruptImage as e:
                if not self.skip_corrupt:
                    raise UserError(f"{e.path}: corrupt or unsupported image ({e.why}); set "
                                    "skip_corrupt=True in the dataset config to skip such "
                                    "files") from None
                with self._warn_lock:
                    first = e.path not in self._warned
                    self._warned.add(e.path)
                if first:
                    warnings.warn(f"{e.path}: corrupt or unsupported image ({e.why}), "
                                  "skipped (skip_corrupt=True)", stacklevel=2)
                j = (j + 1) % len(self)
        else:
            raise UserError(f"{self.where}: no readable image after {self.max_refetch} tries "
                            f"from sample {i}")
        u = sample_uniforms(seed, epoch, (j,), self.pipeline.n_random)[0]
        return self.pipeline(img, u), int(self.labels[j])

    def __getitem__(self, i):
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} outside the {len(self)} samples")
        return self.sample(i % len(self))


class _CorruptImage(Exception):
    def __init__(self, path, why):
        super().__init__(path)
        self.path, self.why = path, why


_IDX_CACHE = {}
_IDX_LOCK = threading.Lock()


def _read_idx(path, magic, ndim):
    """An IDX file (optionally gzipped) as a uint8 array; cached per process."""
    try:
        st = os.stat(path)
    except OSError:
        raise UserError(f"{path}: file not found") from None
    key = (path, st.st_mtime_ns, st.st_size)
    with _IDX_LOCK:
        if key in _IDX_CACHE:
            return _IDX_CACHE[key]
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UserError(f"{path}: cannot read ({e})") from None
    if len(raw) < 4 + 4 * ndim or int.from_bytes(raw[:4], "big") != magic:
        got = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
        raise UserError(f"{path}: not an IDX file of {ndim}-d uint8 data (magic number "
                        f"{got if got is None else hex(got)}, expected {hex(magic)})")
    dims = [int.from_bytes(raw[4 + 4 * k:8 + 4 * k], "big") for k in range(ndim)]
    body = len(raw) - 4 - 4 * ndim
    if body != math.prod(dims):
        raise UserError(f"{path}: header says {'x'.join(map(str, dims))} = {math.prod(dims)} "
                        f"bytes of data, the file holds {body}")
    arr = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)
    with _IDX_LOCK:
        _IDX_CACHE[key] = arr
    return arr


class MNIST(_Dataset):
    """IDX files (train-images-idx3-ubyte[.gz], ... t10k-...) in data_root."""
    default_root = ""

    def __init__(self, where=None, data_root=None, data_prefix="", test_mode=False,
                 split=None, pipeline=(), indices=None, download=False, metainfo=None,
                 lazy_init=False, serialize_data=True, max_refetch=1000, skip_corrupt=False):
        where = where or type(self).__name__
        self._setup(where, pipeline, indices, skip_corrupt, max_refetch)
        root = data_root or (data_prefix if isinstance(data_prefix, str) else "") \
            or self.default_root
        if not root or not os.path.isdir(root):
            raise UserError(f"{where}: data_root {root!r} is not a directory")
        if split not in (None, "train", "test"):
            raise UserError(f"{where}: split must be 'train' or 'test', got {split!r}")
        test = split == "test" if split is not None else bool(test_mode)
        stem = "t10k" if test else "train"
        paths = [self._find(root, f"{stem}-{kind}") for kind in ("images-idx3-ubyte",
                                                                 "labels-idx1-ubyte")]
        images = _read_idx(paths[0], 0x803, 3)
        labels = _read_idx(paths[1], 0x801, 1)
        if len(images) != len(labels):
            raise UserError(f"{paths[0]} holds {len(images)} images but {paths[1]} "
                            f"{len(labels)} labels")
        if labels.size and labels.max() > 9:
            raise UserError(f"{paths[1]}: label {int(labels.max())} outside 0..9")
        sub = self._subset(len(labels), indices)
        if sub is not None:
            images, labels = images[sub], labels[sub]
        self.images = images[..., None]         # (N, 28, 28, 1)
        self.labels = labels.astype(np.int64)
        self._check_nonempty(root)

    @staticmethod
    def _find(root, name):
        for cand in (name + ".gz", name):
            path = os.path.join(root, cand)
            if os.path.isfile(path):
                return path
        raise UserError(f"{os.path.join(root, name + '.gz')}: file not found")


class FashionMNIST(MNIST):
    """Fashion-MNIST's IDX files; data_root defaults to Debian's
    dataset-fashion-mnist package (/usr/share/datasets/fashion-mnist)."""
    default_root = "/usr/share/datasets/fashion-mnist"
    classes = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")


class CIFAR10(_Dataset):
    """CIFAR-10's binary batches (data_batch_1..5.bin, test_batch.bin: records of
    1 label byte + 3072 bytes R, G, B planes of 32x32), in data_root or its
    cifar-10-batches-bin/ folder."""

    def __init__(self, where=None, data_root="", data_prefix="", test_mode=False,
                 split=None, pipeline=(), indices=None, download=False, metainfo=None,
                 lazy_init=False, serialize_data=True, max_refetch=1000, skip_corrupt=False):
        where = where or type(self).__name__
        self._setup(where, pipeline, indices, skip_corrupt, max_refetch)
        root = data_root or (data_prefix if isinstance(data_prefix, str) else "")
        if not root or not os.path.isdir(root):
            raise UserError(f"{where}: data_root {root!r} is not a directory")
        if os.path.isdir(os.path.join(root, "cifar-10-batches-bin")) and not os.path.isfile(
                os.path.join(root, "test_batch.bin")):
            root = os.path.join(root, "cifar-10-batches-bin")
        if split not in (None, "train", "test"):
            raise UserError(f"{where}: split must be 'train' or 'test', got {split!r}")
        test = split == "test" if split is not None else bool(test_mode)
        names = ["test_batch.bin"] if test else [f"data_batch_{k}.bin" for k in range(1, 6)]
        records = []
        for name in names:
            path = os.path.join(root, name)
            try:
                with open(path, "rb") as f:
                    raw = f.read()
            except OSError:
                raise UserError(f"{path}: file not found (CIFAR-10 binary version expected)") \
                    from None
            if not raw or len(raw) % 3073:
                raise UserError(f"{path}: {len(raw)} bytes is not a whole number of "
                                "3073-byte CIFAR-10 records")
            rec = np.frombuffer(raw, np.uint8).reshape(-1, 3073)
            if rec[:, 0].max() > 9:
                raise UserError(f"{path}: label {int(rec[:, 0].max())} outside 0..9")
            records.append(rec)
        rec = np.concatenate(records) if len(records) > 1 else records[0]
        sub = self._subset(len(rec), indices)
        if sub is not None:
            rec = rec[sub]
        self.labels = rec[:, 0].astype(np.int64)
        self.images = np.ascontiguousarray(rec[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        self.classes = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                        "ship", "truck")
        self._check_nonempty(root)


class ImageNet(_Dataset):
    """Image files: ann_file lines `relative/path.JPEG label` (paths under
    data_prefix), or without ann_file one folder per class under data_prefix
    (sorted names give the labels).  ann_file and data_prefix are relative to
    data_root."""
    channel_order = "bgr"           # mmcls decodes with OpenCV

    def __init__(self, where=None, data_root="", ann_file="", data_prefix="",
                 pipeline=(), indices=None, test_mode=False, classes=None, metainfo=None,
                 lazy_init=False, serialize_data=True, max_refetch=1000, skip_corrupt=False,
                 with_label=True, extensions=None):
        where = where or type(self).__name__
        self._setup(where, pipeline, indices, skip_corrupt, max_refetch)
        if data_root and not os.path.isdir(data_root):
            raise UserError(f"{where}: data_root {data_root!r} is not a directory")
        if isinstance(data_prefix, dict):
            _check_keys(f"{where} data_prefix", data_prefix, ("img_path", "img"))
            data_prefix = data_prefix.get("img_path", data_prefix.get("img", ""))
        if not isinstance(data_prefix, str) or not isinstance(ann_file, str):
            raise UserError(f"{where}: ann_file and data_prefix must be strings")
        self.prefix = os.path.join(data_root, data_prefix) if data_root else data_prefix
        exts = IMAGE_EXTENSIONS if extensions is None else tuple(e.lower() for e in extensions)
        if ann_file and self.prefix and not os.path.isdir(self.prefix):
            raise UserError(f"{where}: data_prefix {self.prefix!r} is not a directory")
        if ann_file:
            path = os.path.join(data_root, ann_file) if data_root else ann_file
            rel, labels = self._read_ann(path)
            what = path
        else:
            if not self.prefix or not os.path.isdir(self.prefix):
                raise UserError(f"{where}: data_prefix {self.prefix!r} is not a directory "
                                "(without ann_file it must hold one folder per class)")
            rel, labels, self.classes = self._scan_folders(self.prefix, exts)
            what = self.prefix
        sub = self._subset(len(labels), indices)
        if sub is not None:
            rel, labels = rel[sub], labels[sub]
        self.rel, self.labels = rel, labels
        self._check_nonempty(what)

    def _read_ann(self, path):
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            raise UserError(f"{self.where}: ann_file {path!r} not found") from None
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{path}: not UTF-8 text ({e})") from None
        rel, labels = [], []
        for lineno, line in enumerate(text.splitlines(), 1):
            parts = line.rsplit(None, 1)
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].isascii() or not parts[1].isdigit():
                raise UserError(f"{path}:{lineno}: expected '<relative/path> <label>' with a "
                                f"label >= 0, got {line.strip()!r}")
            rel.append(parts[0].strip())
            labels.append(int(parts[1]))
        if not rel:
            raise UserError(f"{path}: ann_file has no samples")
        return np.array(rel, dtype=object), np.array(labels, np.int64)

    def _scan_folders(self, root, exts):
        classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
        if not classes:
            raise UserError(f"{self.where}: {root!r} has no class folders")
        rel, labels = [], []
        for label, cls in enumerate(classes):
            found = []
            for dirpath, dirnames, files in os.walk(os.path.join(root, cls), followlinks=True):
                dirnames.sort()
                sub = os.path.relpath(dirpath, root)
                found += [os.path.join(sub, f) for f in sorted(files)
                          if os.path.splitext(f)[1].lower() in exts]
            rel += found
            labels += [label] * len(found)
        if not rel:
            raise UserError(f"{self.where}: no {'/'.join(exts)} images under {root!r}")
        return np.array(rel, dtype=object), np.array(labels, np.int64), tuple(classes)

    def path(self, i):
        return os.path.join(self.prefix, self.rel[i])

    def load(self, i):
        path = self.path(i)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise _CorruptImage(path, e.strerror or "cannot read") from None
        try:
            return _C.decode_image(data, path)
        except ValueError:
            raise _CorruptImage(path, "decode failed") from None


class SyntheticDataset(_Dataset):
    """Random uint8 images of image_shape (C, H, W) and labels, seeded: for
    tests, benchmarks and smoke runs without data."""

    def __init__(self, where=None, num_samples=1000, num_classes=1000,
                 image_shape=(3, 224, 224), seed=0, pipeline=(), indices=None, test_mode=False,
                 metainfo=None, lazy_init=False, serialize_data=True):
        where = where or type(self).__name__
        self._setup(where, pipeline, indices)
        for name, v in (("num_samples", num_samples), ("num_classes", num_classes)):
            if not isinstance(v, numbers.Integral) or v < 1:
                raise UserError(f"{where}: {name} must be a positive int, got {v!r}")
        if (not isinstance(image_shape, (list, tuple)) or len(image_shape) != 3
                or not all(isinstance(v, numbers.Integral) and v >= 1 for v in image_shape)):
            raise UserError(f"{where}: image_shape must be (C, H, W) positive ints, "
                            f"got {image_shape!r}")
        self.shape = (int(image_shape[1]), int(image_shape[2]), int(image_shape[0]))
        self.seed = int(seed)
        labels = np.random.default_rng([self.seed, 1]).integers(0, num_classes, num_samples)
        self.pos = self._subset(num_samples, indices)
        self.labels = labels if self.pos is None else labels[self.pos]
        self._check_nonempty("the synthetic set")

    @property
    def base_shape(self):
        return self.shape

    def load(self, i):
        j = i if self.pos is None else int(self.pos[i])
        rng = sample_rng(self.seed, 0xFFFFFFFF, j)
        return np.frombuffer(rng.bytes(math.prod(self.shape)), np.uint8).reshape(self.shape)


DATASETS = {"MNIST": MNIST, "FashionMNIST": FashionMNIST, "CIFAR10": CIFAR10,
            "ImageNet": ImageNet, "CustomDataset": ImageNet, "SyntheticDataset": SyntheticDataset}
_BASE_SHAPES = {"MNIST": (28, 28, 1), "FashionMNIST": (28, 28, 1), "CIFAR10": (32, 32, 3),
                "ImageNet": (None, None, 3), "CustomDataset": (None, None, 3)}


def build_dataset(cfg, where="dataset"):
    """A dataset from dict(type='ImageNet' | 'CustomDataset' | 'FashionMNIST' | 'MNIST' |
    'CIFAR10' | 'SyntheticDataset', ...)."""
    return build(DATASETS, cfg, where, what="dataset")


def dataset_input_shape(dataset_cfg, where="dataset"):
    """(C, H, W) of the images the dataset's pipeline produces, from the
    config alone (no data is read)."""
    if not isinstance(dataset_cfg, dict):
        raise UserError(f"{where}: expected a dict(type=...), got {dataset_cfg!r}")
    kind = strip_scope(dataset_cfg.get("type"))
    if not isinstance(kind, str) or kind not in DATASETS:
        build(DATASETS, dataset_cfg, where, what="dataset")        # raises the unknown-type error
    cfg = {k: v for k, v in dataset_cfg.items() if k not in ("type", "_scope_")}
    _check_keys(f"{where} ({kind})", cfg, signature_keys(DATASETS[kind].__init__, ("where",)))
    if kind == "SyntheticDataset":
        shp = cfg.get("image_shape", (3, 224, 224))
        if not isinstance(shp, (list, tuple)) or len(shp) != 3:
            raise UserError(f"{where} ({kind}): image_shape must be (C, H, W), got {shp!r}")
        shape = (shp[1], shp[2], shp[0])
    else:
        shape = _BASE_SHAPES[kind]
    pipe = Pipeline(cfg.get("pipeline"), f"{where} ({kind}) pipeline")
    h, w, c = pipe.out_shape(shape)
    if h is None or w is None:
        raise UserError(f"{where}: cannot tell the image size the {kind} pipeline produces; "
                        "end it with a fixed-size CenterCrop, RandomResizedCrop or Resize")
    return (int(c), int(h), int(w))


# ---------------------------------------------------------------------------
# sampler, preprocessor, loader
# ---------------------------------------------------------------------------

class DefaultSampler:
    """mmengine's DefaultSampler: a permutation from seed + epoch (or the
    natural order), padded by repetition to a multiple of world_size when
    round_up, of which rank takes every world_size-th entry."""

    def __init__(self, size, shuffle=True, seed=0, round_up=True, rank=0, world_size=1):
        self.size, self.shuffle, self.seed = int(size), bool(shuffle), int(seed)
        self.round_up, self.rank, self.world_size = bool(round_up), int(rank), int(world_size)
        self.epoch = 0
        if self.round_up:
            self.num_samples = -(-self.size // self.world_size)
            self.total_size = self.num_samples * self.world_size
        else:
            self.num_samples = max(0, -(-(self.size - self.rank) // self.world_size))
            self.total_size = self.size

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def indices(self):
        if self.shuffle:
            rng = np.random.Generator(np.random.PCG64((self.seed + self.epoch) & _MASK64))
            idx = rng.permutation(self.size)
        else:
            idx = np.arange(self.size)
        if self.round_up and self.total_size > self.size:
            idx = np.tile(idx, -(-self.total_size // self.size))[:self.total_size]
        return idx[self.rank:self.total_size:self.world_size]

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self):
        return self.num_samples


class DataPreprocessor:
    """mmcls's ClsDataPreprocessor subset: (x - mean) / std per channel after
    the optional BGR <-> RGB swap (to_rgb), done while packing the batch."""

    def __init__(self, where="data_preprocessor", mean=None, std=None, to_rgb=False,
                 bgr_to_rgb=None, rgb_to_bgr=None, num_classes=None, pad_size_divisor=1,
                 pad_value=0, non_blocking=False, batch_augments=None, to_onehot=False):
        self.where = where
        self.to_rgb = bool(to_rgb or bgr_to_rgb or rgb_to_bgr)
        if batch_augments:
            raise UserError(f"{where}: batch_augments (Mixup/CutMix) are not supported")
        if pad_size_divisor != 1:
            raise UserError(f"{where}: pad_size_divisor must be 1")
        if to_onehot:
            raise UserError(f"{where}: to_onehot is not supported")
        if (mean is None) != (std is None):
            raise UserError(f"{where}: give both mean and std, or neither")
        self.mean = self._vec(mean, "mean")
        self.std = self._vec(std, "std")
        if self.std is not None and not (self.std > 0).all():
            raise UserError(f"{where}: std entries must be > 0, got {std!r}")
        if num_classes is not None and (not isinstance(num_classes, numbers.Integral)
                                        or num_classes < 1):
            raise UserError(f"{where}: num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes

    def _vec(self, v, name):
        if v is None:
            return None
        if isinstance(v, numbers.Real):
            v = [v]
        try:
            a = np.asarray(v, np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise UserError(f"{self.where}: {name} must be a list of numbers, got {v!r}") from None
        if a.size not in (1, 3) or not np.isfinite(a).all():
            raise UserError(f"{self.where}: {name} must hold 1 or 3 finite numbers, got {v!r}")
        return a

    def arrays(self, channels):
        """(mean, std) float32 of length `channels`, in the model's channel order."""
        if self.mean is None:
            return np.zeros(channels, np.float32), np.ones(channels, np.float32)
        if self.mean.size not in (1, channels) or self.std.size not in (1, channels):
            raise UserError(f"{self.where}: mean/std have {self.mean.size}/{self.std.size} "
                            f"entries but the images have {channels} channel(s)")
        return (np.broadcast_to(self.mean, channels).astype(np.float32),
                np.broadcast_to(self.std, channels).astype(np.float32))

    def swap(self, dataset, channels):
        """Whether the pack step reverses the RGB channels (mmcls would feed BGR)."""
        return channels == 3 and (dataset.channel_order == "bgr") != self.to_rgb


class DataLoader:
    """Batches (images float32 (N, C, H, W), labels int64 (N,)) of a dataset in
    the sampler's order; num_workers threads build whole batches ahead of the
    consumer (at most num_workers * prefetch_factor in flight)."""

    def __init__(self, dataset, batch_size, sampler, preprocessor, num_workers=0,
                 drop_last=False, seed=0, prefetch_factor=2):
        self.dataset, self.sampler, self.preprocessor = dataset, sampler, preprocessor
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.drop_last, self.seed = bool(drop_last), int(seed)
        self.prefetch_factor = max(1, int(prefetch_factor))
        self._pool = None
        self._pool_lock = threading.Lock()

    @property
    def epoch(self):
        return self.sampler.epoch

    def set_epoch(self, epoch):
        self.sampler.set_epoch(epoch)

    def __len__(self):
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def batch_indices(self):
        """The dataset indices of every batch of the current epoch."""
        idx = self.sampler.indices()
        nb = len(self)
        return [idx[b * self.batch_size:(b + 1) * self.batch_size] for b in range(nb)]

    def __iter__(self):
        return self.iter_from(0)

    def iter_from(self, batch_index):
        """Iterate the current epoch from batch `batch_index` (resume mid-epoch)."""
        batches = self.batch_indices()
        epoch = self.sampler.epoch
        start = max(0, int(batch_index))
        if self.num_workers == 0:
            return (self.make_batch(batches[b], epoch) for b in range(start, len(batches)))
        return self._threaded(batches, epoch, start)

    def _threaded(self, batches, epoch, start):
        pool = self._get_pool()
        pending = collections.deque()
        nxt = start
        depth = self.num_workers * self.prefetch_factor
        try:
            while nxt < len(batches) and len(pending) < depth:
                pending.append(pool.submit(self.make_batch, batches[nxt], epoch))
                nxt += 1
            while pending:
                result = pending.popleft().result()
                if nxt < len(batches):
                    pending.append(pool.submit(self.make_batch, batches[nxt], epoch))
                    nxt += 1
                yield result
        finally:
            for f in pending:
                f.cancel()

    def _get_pool(self):
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="dmcp-data")
            return self._pool

    def close(self):
        """Stop the worker threads (a later iteration starts new ones)."""
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def make_batch(self, indices, epoch):
        """One batch: pipeline every sample, pack it normalised into NCHW."""
        ds, pre, pipe = self.dataset, self.preprocessor, self.dataset.pipeline
        n = len(indices)
        if ds.in_memory and pipe.batched:
            imgs = pipe.run_batch(ds.images[indices],
                                  sample_uniforms(self.seed, epoch, indices, pipe.n_random))
            labels = ds.labels[indices]
        else:
            imgs, labels = [None] * n, np.empty(n, np.int64)
            for k, i in enumerate(indices):
                imgs[k], labels[k] = ds.sample(i, self.seed, epoch)
        h, w, c = imgs[0].shape
        for k in range(n):
            if imgs[k].shape != (h, w, c):
                raise UserError(f"{ds.where}: the pipeline gives images of different sizes in "
                                f"one batch ({imgs[0].shape} and {imgs[k].shape}, H x W x C); "
                                "end it with a fixed-size crop or resize")
        mean, std = pre.arrays(c)
        swap = pre.swap(ds, c)
        out = np.empty((n, c, h, w), np.float32)
        for k in range(n):
            _C.pack_chw(out, k, imgs[k], mean, std, swap)
        return out, labels


PREPROCESSORS = {"ClsDataPreprocessor": DataPreprocessor, "DataPreprocessor": DataPreprocessor,
                 "ImgDataPreprocessor": DataPreprocessor}
# batches are stacked arrays whichever mmengine collate function a config names
_COLLATES = {"default_collate": lambda: None, "pseudo_collate": lambda: None}
_LOADER_KEYS = ("batch_size", "num_workers", "dataset", "sampler", "persistent_workers",
                "pin_memory", "drop_last", "collate_fn", "prefetch_factor", "shuffle")


def build_dataloader(loader_cfg, preprocessor_cfg=None, seed=0, rank=0, world_size=1,
                     shuffle=None, drop_last=None, where="dataloader"):
    """A DataLoader from an mmengine-style dataloader dict and data_preprocessor dict.

    seed drives the sampler's permutation and the per-sample augmentation; it
    must be the same on every rank (the ranks' shards of one permutation are
    disjoint, and each sample's augmentation is keyed by its own index, so no
    per-rank seed is needed).  shuffle / drop_last, when not None, override
    the config's.  `where` names the config entry in error messages."""
    if not isinstance(loader_cfg, dict):
        raise UserError(f"{where}: expected a dict, got {loader_cfg!r}")
    cfg = dict(loader_cfg)
    _check_keys(where, cfg, _LOADER_KEYS)
    for key in ("batch_size", "dataset"):
        if key not in cfg:
            raise UserError(f"{where}: missing {key!r}")
    bs, nw = cfg["batch_size"], cfg.get("num_workers", 0)
    if not isinstance(bs, numbers.Integral) or isinstance(bs, bool) or bs < 1:
        raise UserError(f"{where}: batch_size must be a positive int, got {bs!r}")
    if not isinstance(nw, numbers.Integral) or isinstance(nw, bool) or nw < 0:
        raise UserError(f"{where}: num_workers must be an int >= 0, got {nw!r}")
    pf = cfg.get("prefetch_factor", 2) or 2
    if not isinstance(pf, numbers.Integral) or pf < 1:
        raise UserError(f"{where}: prefetch_factor must be a positive int, got {pf!r}")
    if cfg.get("collate_fn") is not None:        # batches are stacked arrays either way
        build(_COLLATES, cfg["collate_fn"], f"{where}.collate_fn", what="collate_fn")
    if not isinstance(world_size, int) or world_size < 1 or not 0 <= rank < world_size:
        raise UserError(f"{where}: rank {rank!r} / world_size {world_size!r} are inconsistent")

    dataset = build_dataset(cfg["dataset"], f"{where}.dataset")
    pre_cfg = dict(preprocessor_cfg or {})
    pre = build(PREPROCESSORS, pre_cfg, "data_preprocessor", what="data preprocessor",
                default="ClsDataPreprocessor")
    channels = dataset.pipeline.out_shape(dataset.base_shape)[2]
    pre.arrays(channels)                              # mean/std vs channels, now
    if pre.num_classes is not None and dataset.labels.max() >= pre.num_classes:
        raise UserError(f"{dataset.where}: label {int(dataset.labels.max())} does not fit "
                        f"data_preprocessor.num_classes={pre.num_classes}")

    forced_shuffle, loader_seed = shuffle, seed

    def default_sampler(shuffle=True, seed=None, round_up=True):        # the config's keys
        return DefaultSampler(len(dataset), shuffle if forced_shuffle is None else forced_shuffle,
                              loader_seed if seed is None else seed, round_up, rank, world_size)
    scfg = cfg.get("sampler") or dict(type="DefaultSampler", shuffle=cfg.get("shuffle", True))
    sampler = build({"DefaultSampler": default_sampler}, scfg, f"{where}.sampler",
                    what="sampler", default="DefaultSampler")
    drop = cfg.get("drop_last", False) if drop_last is None else drop_last
    return DataLoader(dataset, bs, sampler, pre, num_workers=nw, drop_last=drop, seed=seed,
                      prefetch_factor=pf)
