"""Data pipeline throughput on ImageNet-sized JPEGs.

Writes 64 synthetic 500x375 JPEGs (quality 90) into a temporary class-folder
tree, checks that the threaded loader gives the same batches as the serial
one, then times each stage on one thread and the whole train pipeline
(decode, RandomResizedCrop 224, ColorJitter 0.4, RandomFlip, normalised CHW
pack) through the loader with num_workers 0 and 2.

    python benchmarks/bench_data.py [--images 64] [--epochs 4] [--workers 2]
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dmcp import _C, data  # noqa: E402

PIPELINE = [dict(type="LoadImageFromFile"), dict(type="RandomResizedCrop", scale=224),
            dict(type="ColorJitter", brightness=0.4, contrast=0.4, saturation=0.4),
            dict(type="RandomFlip", prob=0.5, direction="horizontal"),
            dict(type="PackClsInputs")]
PREPROCESSOR = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)


def photo_like(rng, h, w):
    """Smooth colour fields, edges and grain: JPEG sizes near ImageNet's (~100 kB)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.zeros((h, w, 3), np.float32)
    for c in range(3):
        for _ in range(4):
            fx, fy, ph = rng.uniform(0.002, 0.03), rng.uniform(0.002, 0.03), rng.uniform(0, 6.3)
            img[..., c] += rng.uniform(20, 60) * np.sin(fx * x + fy * y + ph)
    for _ in range(12):                                   # hard-edged blocks
        y0, x0 = int(rng.integers(0, h - 20)), int(rng.integers(0, w - 20))
        img[y0:y0 + int(rng.integers(10, 120)), x0:x0 + int(rng.integers(10, 120))] += \
            rng.uniform(-80, 80, 3)
    img += 128 + rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_images(root, n, rng):
    sizes = []
    for i in range(n):
        cls = os.path.join(root, f"class_{i % 4}")
        os.makedirs(cls, exist_ok=True)
        h, w = (375, 500) if i % 3 else (500, 375)
        blob = _C.encode_jpeg(photo_like(rng, h, w), 90)
        with open(os.path.join(cls, f"img_{i:03d}.JPEG"), "wb") as f:
            f.write(blob)
        sizes.append(len(blob))
    return sizes


def per_image_us(fn, items, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for it in items:
            fn(it)
        best = min(best, time.perf_counter() - t)
    return best / len(items) * 1e6


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as root:
        sizes = write_images(root, args.images, rng)
        print(f"{args.images} JPEGs 500x375 / 375x500, mean {np.mean(sizes) / 1e3:.0f} kB")

        def loader(workers):
            cfg = dict(batch_size=args.batch_size, num_workers=workers,
                       dataset=dict(type="ImageNet", data_prefix=root, pipeline=PIPELINE),
                       sampler=dict(type="DefaultSampler", shuffle=True))
            return data.build_dataloader(cfg, PREPROCESSOR, seed=1)

        # validate: threads give the serial loader's batches; values are sane
        serial, threaded = list(loader(0)), list(loader(args.workers))
        for (xa, ya), (xb, yb) in zip(serial, threaded):
            assert np.array_equal(xa, xb) and np.array_equal(ya, yb), "threaded != serial"
        x = serial[0][0]
        assert x.shape == (args.batch_size, 3, 224, 224) and np.isfinite(x).all()
        print(f"validated: num_workers={args.workers} batches == num_workers=0 batches; "
              f"batch mean {x.mean():+.3f} std {x.std():.3f}")

        # stages on one thread
        ds = loader(0).dataset
        blobs = [open(ds.path(i), "rb").read() for i in range(len(ds))]
        imgs = [_C.decode_image(b) for b in blobs]
        rrc = data.RandomResizedCrop(scale=224)
        U = rng.random((len(imgs), rrc.n_random))
        crops = [rrc.apply(im, rrc.params(U[k:k + 1], im.shape)[0]) for k, im in enumerate(imgs)]
        mean = np.array(PREPROCESSOR["mean"], np.float32)
        std = np.array(PREPROCESSOR["std"], np.float32)
        out = np.empty((1, 3, 224, 224), np.float32)
        stages = [
            ("decode (libturbojpeg)", lambda k: _C.decode_image(blobs[k])),
            ("RandomResizedCrop 224", lambda k: rrc.apply(imgs[k], rrc.params(U[k:k + 1],
                                                                              imgs[k].shape)[0])),
            ("ColorJitter b,c,s", lambda k: _C.color_jitter(crops[k].copy(), 1.2, 0.8, 1.3, "bcs")),
            ("flip", lambda k: _C.flip_horizontal(crops[k].copy())),
            ("pack CHW normalised", lambda k: _C.pack_chw(out, 0, crops[k], mean, std, False)),
        ]
        total = 0.0
        print("\nstage (one thread)            us/image")
        for name, fn in stages:
            us = per_image_us(fn, range(len(imgs)))
            total += us
            print(f"  {name:27s} {us:8.0f}")
        print(f"  {'sum':27s} {total:8.0f}   -> {1e6 / total:6.0f} images/s per thread")

        print("\nloader (decode + RRC 224 + jitter + flip + pack)")
        rates = {}
        for workers in (0, args.workers):
            ld = loader(workers)
            next(iter(ld))                                   # warm up threads and caches
            t = time.perf_counter()
            n = 0
            for epoch in range(args.epochs):
                ld.set_epoch(epoch)
                for xb, yb in ld:
                    n += len(yb)
            rates[workers] = n / (time.perf_counter() - t)
            ld.close()
            print(f"  num_workers={workers}: {rates[workers]:7.0f} images/s  ({n} images)")
        print(f"  speed-up with {args.workers} workers: {rates[args.workers] / rates[0]:.2f}x "
              f"on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
