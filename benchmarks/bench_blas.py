"""Which OpenBLAS should dmcp link?  SGEMM GFLOP/s of the GEMMs dmcp's convolutions
issue, through Debian's OpenBLAS (what dmcp._C links today) and through the
OpenBLAS of PyPI's ``scipy-openblas32`` wheel (runtime kernel dispatch, symbols
prefixed ``scipy_``), both loaded into this process with ctypes.  Each GEMM is
checked against NumPy (float64) first, then timed alternately, median of --reps.

Two ways of running each shape: one threaded GEMM (--threads), as the im2col
path calls it, and one single-threaded GEMM, as the pointwise path runs it on
each thread for its own images.

    pip install scipy-openblas32        # measurement only; not a dmcp dependency
    python benchmarks/bench_blas.py [--threads 2] [--reps 5]
"""
import argparse
import ctypes
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
from timing import describe_machine  # noqa: E402

# (M, N, K) row-major C = A @ B: conv forward GEMMs (oc x pixels x c*k*k)
SHAPES = [
    (64, 3136, 576, "R50 64->64 3x3 @56, one image (im2col)"),
    (64, 3136, 64, "R50 64->64 1x1 @56, one image"),
    (256, 196, 1024, "R50 1024->256 1x1 @14, one image"),
    (512, 49, 4608, "R50 512->512 3x3 @7, one image (im2col)"),
    (128, 784, 1152, "R50 128->128 3x3 @28, one image (im2col)"),
    (576, 196, 96, "MBV2 96->576 1x1 @14, one image"),
    (2048, 2048, 2048, "square"),
]
CblasRowMajor, CblasNoTrans = 101, 111


class Blas:
    def __init__(self, name, path, prefix, suffix=""):
        self.name, self.path = name, path
        lib = ctypes.CDLL(path)
        self.sgemm = getattr(lib, f"{prefix}cblas_sgemm{suffix}")
        self.sgemm.restype = None
        self.set_threads = getattr(lib, f"{prefix}openblas_set_num_threads{suffix}")
        cfg = getattr(lib, f"{prefix}openblas_get_config{suffix}")
        cfg.restype = ctypes.c_char_p
        self.config = cfg().decode()

    def gemm(self, a, b, c):
        m, k = a.shape
        n = b.shape[1]
        p = lambda x: x.ctypes.data_as(ctypes.c_void_p)
        self.sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, ctypes.c_float(1.0),
                   p(a), k, p(b), n, ctypes.c_float(0.0), p(c), n)


def debian_openblas():
    import dmcp._C  # noqa: F401  (maps the library dmcp links)
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split()[-1]
            if "libopenblas" in path and "scipy" not in path:
                return Blas("Debian OpenBLAS (dmcp._C)", path, "")
    raise SystemExit("dmcp._C's OpenBLAS is not mapped")


def scipy_openblas32():
    try:
        import scipy_openblas32
    except ImportError:
        return None
    return Blas("scipy-openblas32", scipy_openblas32.get_lib_dir() + "/" +
                [f for f in os.listdir(scipy_openblas32.get_lib_dir()) if f.endswith(".so")][0],
                "scipy_")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()
    print("\n".join(describe_machine(args.threads)))
    libs = [debian_openblas()]
    other = scipy_openblas32()
    if other is None:
        print("scipy-openblas32 is not installed: only Debian's OpenBLAS is measured")
    else:
        libs.append(other)
    for lib in libs:
        print(f"{lib.name}: {lib.config} ({lib.path})")
    rng = np.random.default_rng(0)
    head = "| GEMM (M x N x K) | " + " | ".join(f"{lib.name} {t}" for lib in libs
                                               for t in (f"{args.threads} thr", "1 thr")) + " |"
    rows = [head, "|" + "---|" * (1 + 2 * len(libs))]
    for m, n, k, what in SHAPES:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        want = a.astype(np.float64) @ b.astype(np.float64)
        rates = {}
        for lib in libs:
            c = np.empty((m, n), np.float32)
            lib.set_threads(args.threads)
            lib.gemm(a, b, c)
            err = float(np.abs(c - want).max() / np.abs(want).max())
            if err > 1e-5:
                raise SystemExit(f"{lib.name} {m}x{n}x{k}: relative error {err:.2e}")
        times = {(lib.name, t): [] for lib in libs for t in (args.threads, 1)}
        for _ in range(args.reps):
            for lib in libs:
                for t in (args.threads, 1):
                    lib.set_threads(t)
                    c = np.empty((m, n), np.float32)
                    t0 = time.perf_counter()
                    lib.gemm(a, b, c)
                    times[lib.name, t].append(time.perf_counter() - t0)
        for key, ts in times.items():
            rates[key] = 2.0 * m * n * k / statistics.median(ts) / 1e9
        cells = " | ".join(f"{rates[lib.name, t]:.1f}" for lib in libs for t in (args.threads, 1))
        rows.append(f"| {m}x{n}x{k} {what} | {cells} |")
    for lib in libs:
        lib.set_threads(args.threads)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
