"""Data layer: decoders and image kernels against NumPy/PIL references,
datasets (Fashion-MNIST from the Debian package, fake CIFAR-10 batches, a
folder of JPEG/PNG files), the loader's determinism, sharding and errors."""
import gzip
import math
import os
import struct
import warnings
import zlib

import numpy as np
import pytest

from dmcp import _C, data
from dmcp.units import UserError

FASHION = "/usr/share/datasets/fashion-mnist"
needs_fashion = pytest.mark.skipif(not os.path.isdir(FASHION),
                                   reason="Debian package dataset-fashion-mnist not installed")


# ----------------------------------------------------------------- helpers

def smooth_image(rng, h, w):
    """A JPEG-friendly RGB image: gradients plus mild noise."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255.0 / max(w - 1, 1), y * 255.0 / max(h - 1, 1),
                     (x + y) * 127.0 / max(h + w - 2, 1)], -1)
    return np.clip(base + rng.normal(0, 3, (h, w, 3)), 0, 255).astype(np.uint8)


def png_bytes(rows, w, h, color_type, bit_depth=8, plte=b""):
    """A PNG from raw scanlines (bytes per row, already packed), no PIL needed."""
    def chunk(kind, payload):
        return (struct.pack(">I", len(payload)) + kind + payload
                + struct.pack(">I", zlib.crc32(kind + payload) & 0xFFFFFFFF))
    raw = b"".join(b"\x00" + r for r in rows)
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, 0))
            + (chunk(b"PLTE", plte) if plte else b"")
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def png_rgb(img):
    return png_bytes([r.tobytes() for r in img], img.shape[1], img.shape[0], 2)


def ref_resize(img, y, x, h, w, rh, rw, oy=0, ox=0, oh=None, ow=None):
    """OpenCV INTER_LINEAR in float64: crop (y, x, h, w) -> (rh, rw), window (oy, ox, oh, ow)."""
    oh, ow = oh or rh, ow or rw
    crop = img[y:y + h, x:x + w].astype(np.float64)

    def coords(n, off, src, dst):
        f = (np.arange(off, off + n) + 0.5) * (src / dst) - 0.5
        s = np.floor(f).astype(int)
        fr = f - s
        fr[s < 0], s[s < 0] = 0, 0
        edge = s >= src - 1
        fr[edge], s[edge] = 0, src - 1
        return s, np.minimum(s + 1, src - 1), fr

    y0, y1, fy = coords(oh, oy, h, rh)
    x0, x1, fx = coords(ow, ox, w, rw)
    fx = fx[None, :, None]
    top = crop[y0][:, x0] * (1 - fx) + crop[y0][:, x1] * fx
    bot = crop[y1][:, x0] * (1 - fx) + crop[y1][:, x1] * fx
    return top * (1 - fy[:, None, None]) + bot * fy[:, None, None]


def ref_blend(img, other, f):
    v = np.float32(f) * img.astype(np.float32) + np.float32(1.0 - f) * np.asarray(other, np.float32)
    return np.clip(v, 0, 255).astype(np.uint8)


def ref_gray(img):
    f = img.astype(np.float32)
    return (np.float32(0.2989) * f[..., 0] + np.float32(0.587) * f[..., 1]
            + np.float32(0.114) * f[..., 2]).astype(np.uint8)


def ref_jitter(img, b, c, s, order):
    for op in order:
        if op == "b":
            img = ref_blend(img, 0.0, b)
        elif op == "c":
            mean = np.float32(ref_gray(img).astype(np.float64).mean())
            img = ref_blend(img, mean, c)
        else:
            img = ref_blend(img, ref_gray(img)[..., None], s)
    return img


def write_imagenet(root, rng, n_per_class=3, classes=("cat", "dog"), png_every=3):
    """root/train/<class>/img_k.{JPEG,png} of random sizes; returns [(rel, label)]."""
    items = []
    for label, cls in enumerate(classes):
        os.makedirs(os.path.join(root, "train", cls), exist_ok=True)
        for k in range(n_per_class):
            img = smooth_image(rng, int(rng.integers(40, 90)), int(rng.integers(40, 90)))
            if (k + label) % png_every == 0:
                rel, blob = f"{cls}/img_{k}.png", png_rgb(img)
            else:
                rel, blob = f"{cls}/img_{k}.JPEG", _C.encode_jpeg(img, 92)
            with open(os.path.join(root, "train", rel), "wb") as f:
                f.write(blob)
            items.append((rel, label))
    return items


TRAIN_PIPE = [dict(type="LoadImageFromFile"), dict(type="RandomResizedCrop", scale=32),
              dict(type="ColorJitter", brightness=0.4, contrast=0.4, saturation=0.4),
              dict(type="RandomFlip", prob=0.5, direction="horizontal"),
              dict(type="PackClsInputs")]
VAL_PIPE = [dict(type="LoadImageFromFile"), dict(type="ResizeEdge", scale=36, edge="short"),
            dict(type="CenterCrop", crop_size=32), dict(type="PackClsInputs")]
PRE = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)


@pytest.fixture
def imagenet(tmp_path):
    items = write_imagenet(str(tmp_path), np.random.default_rng(7), n_per_class=6,
                           classes=("a", "b", "c"))
    os.makedirs(tmp_path / "meta")
    with open(tmp_path / "meta" / "train.txt", "w") as f:
        f.writelines(f"{rel} {label}\n" for rel, label in items)
    return tmp_path, items


def imagenet_loader(root, pipeline=TRAIN_PIPE, num_workers=0, seed=0, batch_size=4, **ds):
    cfg = dict(batch_size=batch_size, num_workers=num_workers,
               dataset=dict(type="ImageNet", data_root=str(root), ann_file="meta/train.txt",
                            data_prefix="train", pipeline=pipeline, **ds),
               sampler=dict(type="DefaultSampler", shuffle=True))
    return data.build_dataloader(cfg, PRE, seed=seed)


# ----------------------------------------------------------------- decoding

def test_decode_jpeg_png_roundtrip_and_errors():
    rng = np.random.default_rng(0)
    img = smooth_image(rng, 37, 53)
    got = _C.decode_image(png_rgb(img))
    assert got.dtype == np.uint8 and got.shape == (37, 53, 3) and got.flags.c_contiguous
    np.testing.assert_array_equal(got, img)
    jpg = _C.decode_image(_C.encode_jpeg(img, 95), "x.jpg")
    assert jpg.shape == img.shape and np.abs(jpg.astype(int) - img).mean() < 4
    jpeg = _C.encode_jpeg(img, 90)
    for bad in (b"", b"garbage", jpeg[:100], jpeg[:len(jpeg) // 2], png_rgb(img)[:60],
                b"\x89PNG\r\n\x1a\n" + b"0" * 50):
        with pytest.raises(ValueError, match="decode_image: corrupt or unsupported image 'f.jpg'"):
            _C.decode_image(bad, "f.jpg")
    with pytest.raises(ValueError, match=r"\(7 bytes; JPEG and PNG"):
        _C.decode_image(b"garbage")
    with pytest.raises(TypeError, match="decode_image: argument 'data' must be bytes"):
        _C.decode_image("x.jpg")


def test_decode_fuzzed_bytes_never_crash():
    rng = np.random.default_rng(1)
    img = smooth_image(rng, 24, 31)
    for blob in (_C.encode_jpeg(img, 80), png_rgb(img)):
        for _ in range(300):
            b = bytearray(blob)
            for pos in rng.integers(0, len(b), int(rng.integers(1, 8))):
                b[pos] = int(rng.integers(0, 256))
            try:
                out = _C.decode_image(bytes(b))
                assert out.ndim == 3 and out.shape[2] == 3
            except ValueError:
                pass


def test_decode_png_kinds():
    rng = np.random.default_rng(2)
    gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    got = _C.decode_image(png_bytes([r.tobytes() for r in gray], 7, 5, 0))
    np.testing.assert_array_equal(got, np.repeat(gray[..., None], 3, -1))
    two_bit = rng.integers(0, 4, (3, 8), dtype=np.uint8)            # 4 pixels per byte
    rows = [bytes((r[i] << 6) | (r[i + 1] << 4) | (r[i + 2] << 2) | r[i + 3]
                  for i in range(0, 8, 4)) for r in two_bit]
    got = _C.decode_image(png_bytes(rows, 8, 3, 0, bit_depth=2))
    np.testing.assert_array_equal(got, np.repeat(two_bit[..., None] * 85, 3, -1))
    rgb16 = rng.integers(0, 65536, (4, 6, 3)).astype(">u2")
    got = _C.decode_image(png_bytes([r.tobytes() for r in rgb16], 6, 4, 2, bit_depth=16))
    np.testing.assert_array_equal(got, (rgb16 >> 8).astype(np.uint8))
    rgba = rng.integers(0, 256, (4, 5, 4), dtype=np.uint8)
    got = _C.decode_image(png_bytes([r.tobytes() for r in rgba], 5, 4, 6))
    np.testing.assert_array_equal(got, rgba[..., :3])
    pal = rng.integers(0, 256, (4, 3), dtype=np.uint8)
    idx = rng.integers(0, 4, (3, 5), dtype=np.uint8)
    got = _C.decode_image(png_bytes([r.tobytes() for r in idx], 5, 3, 3, plte=pal.tobytes()))
    np.testing.assert_array_equal(got, pal[idx])


def test_decode_matches_pil():
    Image = pytest.importorskip("PIL.Image")
    import io
    rng = np.random.default_rng(3)
    img = smooth_image(rng, 45, 61)
    cases = []
    for mode in ("RGB", "L", "CMYK"):
        for progressive in (False, True):
            buf = io.BytesIO()
            Image.fromarray(img).convert(mode).save(buf, "JPEG", quality=85,
                                                    progressive=progressive)
            cases.append(buf.getvalue())
    for mode in ("RGB", "RGBA", "L", "LA", "P"):
        buf = io.BytesIO()
        Image.fromarray(img).convert(mode).save(buf, "PNG")
        cases.append(buf.getvalue())
    for blob in cases:
        want = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))
        got = _C.decode_image(blob)
        assert got.shape == want.shape
        assert np.abs(got.astype(int) - want).max() <= 1


# ----------------------------------------------------------------- kernels

@pytest.mark.parametrize("geom", [
    # (H, W, C, y, x, h, w, rh, rw, oy, ox, oh, ow)
    (40, 50, 3, 0, 0, 40, 50, 17, 23, 0, 0, 17, 23),        # downscale
    (13, 9, 3, 2, 1, 10, 7, 31, 29, 0, 0, 31, 29),          # upscale of a crop
    (33, 47, 1, 5, 6, 20, 30, 20, 30, 0, 0, 20, 30),        # same size: a copy
    (64, 48, 3, 3, 4, 50, 40, 70, 56, 9, 5, 41, 37),        # window of a resized crop
    (7, 5, 3, 0, 0, 1, 1, 4, 3, 0, 0, 4, 3),                # 1x1 source
])
def test_resize_crop_matches_reference(geom):
    H, W, C, y, x, h, w, rh, rw, oy, ox, oh, ow = geom
    img = np.random.default_rng(4).integers(0, 256, (H, W, C), dtype=np.uint8)
    want = ref_resize(img, y, x, h, w, rh, rw, oy, ox, oh, ow)
    outf = np.empty((oh, ow, C), np.float32)
    _C.resize_crop(outf, img, y, x, h, w, rh, rw, oy, ox)
    np.testing.assert_allclose(outf, want, atol=2e-3)
    outu = np.empty((oh, ow, C), np.uint8)
    _C.resize_crop(outu, img, y, x, h, w, rh, rw, oy, ox)
    assert np.abs(outu.astype(np.float64) - np.floor(want + 0.5)).max() <= 1


def test_resize_edge_center_crop_fused_equals_separate():
    img = np.random.default_rng(5).integers(0, 256, (75, 100, 3), dtype=np.uint8)
    fused = data.Pipeline([dict(type="ResizeEdge", scale=60),
                           dict(type="CenterCrop", crop_size=50)])
    assert len(fused.transforms) == 1
    sep = data.Pipeline([dict(type="ResizeEdge", scale=60), dict(type="RandomFlip", prob=0.0),
                         dict(type="CenterCrop", crop_size=50)])
    a, b = fused(img), sep(img)
    assert a.shape == (50, 50, 3)
    np.testing.assert_array_equal(a, b)
    # mmcls sizes: ResizeEdge truncates, CenterCrop rounds its offset
    assert data.ResizeEdge(256).size(375, 500) == (256, 341)
    assert data.CenterCrop(224).window(256, 341)[:2] == (16, 58)


def test_flip_jitter_pack_match_numpy():
    rng = np.random.default_rng(6)
    img = rng.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    f = img.copy()
    _C.flip_horizontal(f)
    np.testing.assert_array_equal(f, img[:, ::-1])
    for b, c, s, order in ((1.3, 0.7, 1.6, "bcs"), (0.6, 1.4, 0.2, "scb"), (0.0, 2.0, 1.0, "cs"),
                           (1.0, 1.0, 1.0, "bcs")):
        got = img.copy()
        _C.color_jitter(got, b, c, s, order)
        np.testing.assert_array_equal(got, ref_jitter(img, b, c, s, order))
    g1 = rng.integers(0, 256, (6, 4, 1), dtype=np.uint8)
    got = g1.copy()
    _C.color_jitter(got, 1.2, 0.5, 1.7, "bcs")           # gray: saturation is a no-op
    want = ref_blend(ref_blend(g1, 0.0, 1.2), np.float32(ref_blend(g1, 0.0, 1.2).mean()), 0.5)
    np.testing.assert_array_equal(got, want)
    mean = np.array([1.0, 2.0, 3.0], np.float32)
    std = np.array([2.0, 4.0, 8.0], np.float32)
    batch = np.zeros((3, 3, 9, 11), np.float32)
    for swap in (0, 1):
        _C.pack_chw(batch, 1 + swap, img, mean, std, swap)
        src = img[..., ::-1] if swap else img
        want = (src.transpose(2, 0, 1).astype(np.float32) - mean[:, None, None]) \
            / std[:, None, None]
        np.testing.assert_array_equal(batch[1 + swap], want)
    assert not batch[0].any()


def test_kernel_argument_checks():
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(TypeError, match="resize_crop: argument 'inp' must have dtype uint8"):
        _C.resize_crop(np.zeros((4, 4, 3), np.uint8), img.astype(np.float32), 0, 0, 8, 8)
    with pytest.raises(ValueError, match="resize_crop: crop .* is not inside the 8x8 input"):
        _C.resize_crop(np.zeros((4, 4, 3), np.uint8), img, 4, 0, 8, 8)
    with pytest.raises(ValueError, match="resize_crop: 'out' has 1 channels but 'inp' 3"):
        _C.resize_crop(np.zeros((4, 4, 1), np.uint8), img, 0, 0, 8, 8)
    with pytest.raises(ValueError, match="resize_crop: window"):
        _C.resize_crop(np.zeros((4, 4, 3), np.uint8), img, 0, 0, 8, 8, 4, 4, 1, 0)
    with pytest.raises(ValueError, match="flip_horizontal: argument 'img' must be C-contiguous"):
        _C.flip_horizontal(np.zeros((8, 8, 3), np.uint8)[:, ::2])
    with pytest.raises(ValueError, match="color_jitter: order must list"):
        _C.color_jitter(img, 1.0, 1.0, 1.0, "bbx")
    with pytest.raises(ValueError, match="color_jitter: contrast factor must be finite"):
        _C.color_jitter(img, 1.0, -1.0, 1.0)
    batch = np.zeros((2, 3, 8, 8), np.float32)
    ms = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="pack_chw: index 2 outside the batch of 2"):
        _C.pack_chw(batch, 2, img, ms, ms, False)
    with pytest.raises(ValueError, match="pack_chw: 'img' is 8x7x3"):
        _C.pack_chw(batch, 0, np.zeros((8, 7, 3), np.uint8), ms, ms, False)
    with pytest.raises(ValueError, match="pack_chw: 'std' entries must be finite and > 0"):
        _C.pack_chw(batch, 0, img, ms, np.zeros(3, np.float32), False)
    with pytest.raises(ValueError, match="encode_jpeg: quality"):
        _C.encode_jpeg(img, 0)


# ----------------------------------------------------------------- transforms

def ref_rrc_params(u, h, w, area_range=(0.08, 1.0), ratio_range=(3 / 4, 4 / 3), attempts=10):
    """mmcls's rand_crop_params, one sample, reading uniforms by position."""
    log_lo, log_hi = math.log(ratio_range[0]), math.log(ratio_range[1])
    for a in range(attempts):
        target = (area_range[0] + (area_range[1] - area_range[0]) * u[2 * a]) * h * w
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[2 * a + 1])
        tw, th = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < tw <= w and 0 < th <= h:
            return (int(u[2 * attempts] * (h - th + 1)), int(u[2 * attempts + 1] * (w - tw + 1)),
                    th, tw)
    return None


def test_random_resized_crop_params_follow_mmcls():
    t = data.RandomResizedCrop(scale=(20, 30))
    U = np.random.default_rng(8).random((2000, t.n_random))
    p = t.params(U, (60, 90, 3))
    y, x, h, w = p.T
    assert (y >= 0).all() and (x >= 0).all() and (y + h <= 60).all() and (x + w <= 90).all()
    area = h * w / (60 * 90)
    assert area.min() > 0.07 and area.max() <= 1.0
    for k in range(200):
        want = ref_rrc_params(U[k], 60, 90)
        assert tuple(p[k]) == (want if want else (0, 0, 60, 80))     # fallback: centred crop
    # an impossible area range always falls back to the centred crop of mmcls
    t = data.RandomResizedCrop(scale=16, crop_ratio_range=(2.0, 3.0))
    p = t.params(np.random.default_rng(9).random((5, t.n_random)), (40, 100, 3))
    assert (p == [0, 23, 40, 53]).all()                    # ratio 2.5 > 4/3: h=40, w=round(53.3)
    img = np.random.default_rng(10).integers(0, 256, (40, 100, 3), dtype=np.uint8)
    out = t.apply(img, p[0])
    assert out.shape == (16, 16, 3)
    np.testing.assert_array_equal(out, _resize_ref_u8(img, 0, 23, 40, 53, 16, 16))


def _resize_ref_u8(img, y, x, h, w, rh, rw):
    out = np.empty((rh, rw, img.shape[2]), np.uint8)
    _C.resize_crop(out, img, y, x, h, w)
    return out


def test_random_crop_and_flip_batch_equal_single():
    rng = np.random.default_rng(11)
    imgs = rng.integers(0, 256, (6, 10, 12, 3), dtype=np.uint8)
    pipe = data.Pipeline([dict(type="RandomCrop", crop_size=(8, 9), padding=2),
                          dict(type="RandomFlip", prob=0.5, direction="diagonal")])
    U = rng.random((6, pipe.n_random))
    batch = pipe.run_batch(imgs, U)
    assert batch.shape == (6, 8, 9, 3)
    for k in range(6):
        np.testing.assert_array_equal(batch[k], pipe(imgs[k], U[k]))
    y, x = data.RandomCrop(crop_size=(8, 9), padding=2).params(U[:1, :2], (10, 12, 3))[0]
    padded = np.pad(imgs[0], ((2, 2), (2, 2), (0, 0)))
    crop = padded[y:y + 8, x:x + 9]
    flip = U[0, 2] < 0.5
    np.testing.assert_array_equal(batch[0], crop[::-1, ::-1] if flip else crop)


def test_pipeline_config_errors():
    with pytest.raises(UserError, match=r"pipeline\[1\] \(RandomFlip\): unknown key 'probability'"):
        data.Pipeline([dict(type="LoadImageFromFile"), dict(type="RandomFlip", probability=0.5)])
    with pytest.raises(UserError,
                       match="unknown transform type 'RandomFlop'.*did you mean 'RandomFlip'"):
        data.Pipeline([dict(type="mmcls.RandomFlop")])
    with pytest.raises(UserError, match="normalisation belongs in data_preprocessor"):
        data.Pipeline([dict(type="Normalize", mean=[0], std=[1])])
    with pytest.raises(UserError, match="hue jitter is not supported"):
        data.Pipeline([dict(type="ColorJitter", hue=0.1)])
    with pytest.raises(UserError, match="scale must be an int or a pair"):
        data.Pipeline([dict(type="RandomResizedCrop", scale="big")])


# ----------------------------------------------------------------- datasets

@needs_fashion
def test_fashion_mnist_loads():
    train = data.build_dataset(dict(type="mmcls.FashionMNIST"))
    test = data.build_dataset(dict(type="FashionMNIST", data_root=FASHION, test_mode=True))
    assert len(train) == 60000 and len(test) == 10000
    assert train.images.shape == (60000, 28, 28, 1) and train.images.dtype == np.uint8
    for ds in (train, test):
        assert ds.labels.dtype == np.int64 and set(np.unique(ds.labels)) == set(range(10))
    first = data.build_dataset(dict(type="FashionMNIST", indices=100))
    assert len(first) == 100
    np.testing.assert_array_equal(first.images, train.images[:100])
    np.testing.assert_array_equal(first.labels, train.labels[:100])
    assert data.dataset_input_shape(dict(type="FashionMNIST", pipeline=[
        dict(type="RandomCrop", crop_size=28, padding=4),
        dict(type="PackClsInputs")])) == (1, 28, 28)
    loader = data.build_dataloader(
        dict(batch_size=64, num_workers=0, dataset=dict(type="FashionMNIST", indices=130),
             sampler=dict(type="DefaultSampler", shuffle=False)),
        dict(mean=[72.94], std=[90.02], num_classes=10))
    batches = list(loader)
    assert len(loader) == len(batches) == 3 and batches[-1][0].shape == (2, 1, 28, 28)
    x, y = batches[0]
    assert x.dtype == np.float32 and x.flags.c_contiguous and y.dtype == np.int64
    want = (train.images[:64].transpose(0, 3, 1, 2).astype(np.float32) - np.float32(72.94)) \
        / np.float32(90.02)
    np.testing.assert_array_equal(x, want)
    np.testing.assert_array_equal(y, train.labels[:64])


def _write_idx(path, magic, dims, payload):
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in dims) + payload)


def test_mnist_idx_validation(tmp_path):
    root = str(tmp_path)
    _write_idx(f"{root}/train-images-idx3-ubyte.gz", 0x803, (2, 28, 28), bytes(2 * 784))
    _write_idx(f"{root}/train-labels-idx1-ubyte.gz", 0x801, (2,), bytes([3, 4]))
    ds = data.build_dataset(dict(type="FashionMNIST", data_root=root))
    assert len(ds) == 2 and ds.labels.tolist() == [3, 4]
    _write_idx(f"{root}/train-labels-idx1-ubyte.gz", 0x801, (3,), bytes([3, 4]))
    with pytest.raises(UserError, match="train-labels-idx1-ubyte.gz: header says 3 = 3 bytes"):
        data.build_dataset(dict(type="FashionMNIST", data_root=root))
    _write_idx(f"{root}/train-labels-idx1-ubyte.gz", 0x803, (2,), bytes([3, 4]))
    with pytest.raises(UserError, match="train-labels-idx1-ubyte.gz: not an IDX file"):
        data.build_dataset(dict(type="FashionMNIST", data_root=root))
    with pytest.raises(UserError, match="t10k-images-idx3-ubyte.gz: file not found"):
        data.build_dataset(dict(type="FashionMNIST", data_root=root, test_mode=True))
    with pytest.raises(UserError, match="data_root '/no/such/dir' is not a directory"):
        data.build_dataset(dict(type="FashionMNIST", data_root="/no/such/dir"))


def test_cifar10_binary_batches(tmp_path):
    rng = np.random.default_rng(12)
    recs = {}
    for name, n in [(f"data_batch_{k}.bin", 3) for k in range(1, 6)] + [("test_batch.bin", 2)]:
        rec = rng.integers(0, 256, (n, 3073), dtype=np.uint8)
        rec[:, 0] %= 10
        recs[name] = rec
        (tmp_path / name).write_bytes(rec.tobytes())
    train = data.build_dataset(dict(type="CIFAR10", data_root=str(tmp_path)))
    test = data.build_dataset(dict(type="CIFAR10", data_root=str(tmp_path), test_mode=True))
    assert len(train) == 15 and len(test) == 2
    r = recs["data_batch_2.bin"][1]
    assert train.labels[4] == r[0]
    np.testing.assert_array_equal(train.images[4], r[1:].reshape(3, 32, 32).transpose(1, 2, 0))
    # CIFAR is RGB in mmcls's pipeline: to_rgb=False keeps it, to_rgb=True swaps to BGR
    cfg = dict(batch_size=2, dataset=dict(type="CIFAR10", data_root=str(tmp_path), test_mode=True),
               sampler=dict(type="DefaultSampler", shuffle=False))
    x0, _ = next(iter(data.build_dataloader(cfg, dict(mean=[0, 0, 0], std=[1, 1, 1]))))
    x1, _ = next(iter(data.build_dataloader(cfg, dict(mean=[0, 0, 0], std=[1, 1, 1], to_rgb=True))))
    np.testing.assert_array_equal(x0, test.images.transpose(0, 3, 1, 2).astype(np.float32))
    np.testing.assert_array_equal(x1, x0[:, ::-1])
    assert len(data.build_dataset(dict(type="CIFAR10", data_root=str(tmp_path), indices=4))) == 4
    (tmp_path / "test_batch.bin").write_bytes(bytes(3073 + 5))
    with pytest.raises(UserError, match="test_batch.bin: 3078 bytes is not a whole number"):
        data.build_dataset(dict(type="CIFAR10", data_root=str(tmp_path), test_mode=True))


def test_imagenet_ann_file_and_class_folders(imagenet):
    root, items = imagenet
    by_ann = data.build_dataset(dict(type="ImageNet", data_root=str(root),
                                     ann_file="meta/train.txt", data_prefix="train"))
    by_dir = data.build_dataset(dict(type="mmcls.ImageNet", data_root=str(root),
                                     data_prefix=dict(img_path="train")))
    assert len(by_ann) == len(by_dir) == 18 and by_dir.classes == ("a", "b", "c")
    assert sorted(zip(by_ann.rel, by_ann.labels.tolist())) == \
        sorted(zip(by_dir.rel, by_dir.labels.tolist())) == sorted(items)
    assert len(data.build_dataset(dict(type="ImageNet", data_root=str(root), indices=5,
                                       ann_file="meta/train.txt", data_prefix="train"))) == 5
    for i in (0, 3):                                      # a PNG and a JPEG
        raw = by_ann.load(i)
        with open(by_ann.path(i), "rb") as f:
            np.testing.assert_array_equal(raw, _C.decode_image(f.read()))
    img, label = by_ann[1]
    assert img.shape == raw.shape or img.ndim == 3
    assert label == items[1][1]


def test_imagenet_channel_order_and_val_shape(imagenet):
    root, items = imagenet
    ds_cfg = dict(type="ImageNet", data_root=str(root), ann_file="meta/train.txt",
                  data_prefix="train", pipeline=VAL_PIPE)
    assert data.dataset_input_shape(ds_cfg) == (3, 32, 32)
    cfg = dict(batch_size=3, dataset=ds_cfg, sampler=dict(type="DefaultSampler", shuffle=False))
    unit = dict(mean=[0, 0, 0], std=[1, 1, 1])
    x_rgb, _ = next(iter(data.build_dataloader(cfg, dict(unit, to_rgb=True))))
    x_bgr, _ = next(iter(data.build_dataloader(cfg, unit)))
    ds = data.build_dataset(ds_cfg)
    np.testing.assert_array_equal(x_rgb[0], ds[0][0].transpose(2, 0, 1))   # mmcls: BGR -> RGB
    np.testing.assert_array_equal(x_bgr, x_rgb[:, ::-1])                  # mmcls feeds BGR


def test_loader_deterministic_across_workers_and_seeds(imagenet):
    root, _ = imagenet
    runs = [list(imagenet_loader(root, num_workers=w, seed=3)) for w in (0, 2, 2)]
    assert len(runs[0]) == 5 and runs[0][-1][0].shape == (2, 3, 32, 32)
    for run in runs[1:]:
        for (xa, ya), (xb, yb) in zip(runs[0], run):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    other = list(imagenet_loader(root, seed=4))
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(runs[0], other))
    loader = imagenet_loader(root, num_workers=2, seed=3)
    loader.set_epoch(1)
    epoch1 = list(loader)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(runs[0], epoch1))
    resumed = list(loader.iter_from(3))                       # still epoch 1
    assert len(resumed) == 2
    for (xa, ya), (xb, yb) in zip(epoch1[3:], resumed):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    it = iter(loader)                                          # abandoned mid-epoch
    next(it)
    del it
    loader.close()
    x, y = runs[0][0]
    assert x.dtype == np.float32 and x.flags.c_contiguous and y.dtype == np.int64


def test_sampler_shards_disjoint_and_cover():
    for n, world in ((12, 3), (10, 3), (7, 2)):
        shards = [data.DefaultSampler(n, shuffle=True, seed=5, rank=r, world_size=world)
                  for r in range(world)]
        for s in shards:
            s.set_epoch(2)
        parts = [s.indices() for s in shards]
        assert len({len(p) for p in parts}) == 1 and len(parts[0]) == len(shards[0])
        joined = np.concatenate(parts)
        assert set(joined.tolist()) == set(range(n))
        assert len(joined) == -(-n // world) * world
        if n % world == 0:
            assert len(set(joined.tolist())) == n            # disjoint
    a = data.DefaultSampler(20, seed=1)
    first = a.indices()
    a.set_epoch(1)
    assert sorted(a.indices().tolist()) == list(range(20)) and (a.indices() != first).any()
    assert (data.DefaultSampler(20, shuffle=False).indices() == np.arange(20)).all()


def test_loader_length_and_drop_last():
    cfg = dict(batch_size=4, drop_last=True, sampler=dict(type="DefaultSampler", shuffle=False),
               dataset=dict(type="SyntheticDataset", num_samples=10, num_classes=3,
                            image_shape=(3, 8, 8)))
    loader = data.build_dataloader(cfg, None)
    assert len(loader) == 2 and [len(y) for _, y in loader] == [4, 4]
    loader = data.build_dataloader(dict(cfg, drop_last=False), None)
    assert len(loader) == 3 and [len(y) for _, y in loader] == [4, 4, 2]
    a = data.build_dataset(cfg["dataset"])
    b = data.build_dataset(cfg["dataset"])
    np.testing.assert_array_equal(a[3][0], b[3][0])
    assert a.labels.max() < 3


# ----------------------------------------------------------------- errors

def test_dataset_errors(imagenet, tmp_path):
    root, items = imagenet
    base = dict(type="ImageNet", data_root=str(root), ann_file="meta/train.txt",
                data_prefix="train")
    with pytest.raises(UserError, match="data_root '/no/imagenet' is not a directory"):
        data.build_dataset(dict(base, data_root="/no/imagenet"))
    with pytest.raises(UserError, match=r"ann_file '.*meta/val.txt' not found"):
        data.build_dataset(dict(base, ann_file="meta/val.txt"))
    with open(root / "meta" / "bad.txt", "w") as f:
        f.write("a/img_1.JPEG 0\n\na/img_2.JPEG\n")
    with pytest.raises(UserError, match=r"meta/bad.txt:3: expected '<relative/path> <label>'"):
        data.build_dataset(dict(base, ann_file="meta/bad.txt"))
    (root / "meta" / "empty.txt").write_text("\n")
    with pytest.raises(UserError, match="empty.txt: ann_file has no samples"):
        data.build_dataset(dict(base, ann_file="meta/empty.txt"))
    with pytest.raises(UserError, match=r"\(ImageNet\): unknown key 'ann_fille'.*'ann_file'"):
        data.build_dataset(dict(base, ann_fille="x"))
    with pytest.raises(UserError, match="unknown dataset type 'ImageNett'"):
        data.build_dataset(dict(base, type="ImageNett"))
    with pytest.raises(UserError, match="dataloader: unknown key 'batchsize'"):
        data.build_dataloader(dict(batchsize=2, dataset=base), PRE)
    with pytest.raises(UserError, match="data_preprocessor .*: unknown key 'means'"):
        data.build_dataloader(dict(batch_size=2, dataset=base), dict(means=[0]))
    with pytest.raises(UserError, match="label 2 does not fit data_preprocessor.num_classes=2"):
        data.build_dataloader(dict(batch_size=2, dataset=base), dict(PRE, num_classes=2))
    with pytest.raises(UserError, match="mean/std have 3/3 entries but the images have 1"):
        data.build_dataloader(dict(batch_size=2, dataset=dict(
            type="SyntheticDataset", num_samples=4, image_shape=(1, 8, 8))), PRE)
    with pytest.raises(UserError, match="cannot tell the image size"):
        data.dataset_input_shape(dict(base, pipeline=[dict(type="ResizeEdge", scale=10)]))


def test_corrupt_image_error_and_skip(imagenet):
    root, items = imagenet
    bad = root / "train" / items[1][0]
    bad.write_bytes(b"\xff\xd8\xff" + b"\x00" * 40)
    with pytest.raises(UserError, match=f"{bad}: corrupt or unsupported image.*skip_corrupt=True"):
        list(imagenet_loader(root, num_workers=2, batch_size=18))
    ds = data.build_dataset(dict(type="ImageNet", data_root=str(root), ann_file="meta/train.txt",
                                 data_prefix="train", pipeline=VAL_PIPE, skip_corrupt=True))
    with pytest.warns(UserWarning, match=f"{bad}: corrupt or unsupported image"):
        img, label = ds.sample(1)
    np.testing.assert_array_equal(img, ds.sample(2)[0])      # the next sample stands in
    assert label == items[2][1]
    (root / "train" / items[2][0]).unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ds.sample(1)[1] == items[3][1]                 # missing files are skipped too
    with pytest.raises(UserError, match="img_2.* corrupt or unsupported image \\(No such file"):
        data.build_dataset(dict(type="ImageNet", data_root=str(root), ann_file="meta/train.txt",
                                data_prefix="train")).sample(2)
