"""Build dmcp._C: plain C kernels in csrc/ with OpenMP and OpenBLAS's CBLAS.

DMCP_DEBUG=1 builds with -O0 -g and the address/undefined sanitizers
(run the tests with LD_PRELOAD=$(gcc -print-file-name=libasan.so)).
"""
import glob
import os
import shlex
import subprocess

import numpy
from setuptools import Extension, setup


def openblas_flags():
    """Compiler and linker flags of OpenBLAS, from pkg-config when it knows it."""
    for name in ("openblas", "cblas"):
        try:
            cflags = subprocess.check_output(["pkg-config", "--cflags", name], text=True)
            libs = subprocess.check_output(["pkg-config", "--libs", name], text=True)
        except (OSError, subprocess.CalledProcessError):
            continue
        return shlex.split(cflags), shlex.split(libs)
    return ["-I/usr/include/x86_64-linux-gnu/openblas-pthread"], ["-lopenblas"]


blas_cflags, blas_libs = openblas_flags()


def image_flags():
    """Flags of the image decoders (csrc/image.c): libturbojpeg and libpng."""
    cflags, libs = [], []
    for name, default in (("libturbojpeg", "-lturbojpeg"), ("libpng", "-lpng16")):
        try:
            cflags += shlex.split(subprocess.check_output(["pkg-config", "--cflags", name], text=True))
            libs += shlex.split(subprocess.check_output(["pkg-config", "--libs", name], text=True))
        except (OSError, subprocess.CalledProcessError):
            libs.append(default)
    return cflags, libs


image_cflags, image_libs = image_flags()
debug = os.environ.get("DMCP_DEBUG", "") not in ("", "0")
if debug:
    opt = ["-O0", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined"]
    link_extra = ["-fsanitize=address,undefined"]
else:
    opt = ["-O3", "-march=native"]
    link_extra = []

ext = Extension(
    "dmcp._C",
    sources=sorted(glob.glob("csrc/*.c")),
    depends=sorted(glob.glob("csrc/*.h")),
    include_dirs=[numpy.get_include(), "csrc"],
    extra_compile_args=["-std=c11", "-fopenmp", "-Wall", "-Wno-unknown-pragmas"] + opt + blas_cflags
    + image_cflags,
    extra_link_args=["-fopenmp"] + blas_libs + image_libs + link_extra,
)

setup(ext_modules=[ext])
