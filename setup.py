"""Build dmcp._C: plain C kernels in csrc/ with OpenMP and OpenBLAS's CBLAS.

DMCP_DEBUG=1 builds with -O0 -g and the address/undefined sanitizers
(run the tests with LD_PRELOAD=$(gcc -print-file-name=libasan.so)).
"""
import glob
import os
import platform
import shlex
import subprocess
import sysconfig

import numpy
from setuptools import Extension, setup


def pkg_config(name, env=None):
    """(cflags, libs) that pkg-config knows for name, or None."""
    try:
        cflags = subprocess.check_output(["pkg-config", "--cflags", name], text=True, env=env)
        libs = subprocess.check_output(["pkg-config", "--libs", name], text=True, env=env)
    except (OSError, subprocess.CalledProcessError):
        return None
    return shlex.split(cflags), shlex.split(libs)


def openblas_flags():
    """(threading, cflags, libs) of the OpenBLAS to link.  First choice is the
    build whose threads are OpenMP's (Debian's libopenblas-openmp-dev): its GEMMs
    then run on dmcp's own OpenMP threads, one pool, so idle threads may spin
    between kernels instead of sleeping.  It is found through its own pkg-config
    file and pinned with a run path, because the system's default libopenblas.so.0
    may be another build.  DMCP_BLAS=pthread skips it."""
    multiarch = sysconfig.get_config_var("MULTIARCH") or "x86_64-linux-gnu"
    omp_dir = f"/usr/lib/{multiarch}/openblas-openmp"
    if os.environ.get("DMCP_BLAS", "openmp") != "pthread" and os.path.isdir(omp_dir):
        env = dict(os.environ, PKG_CONFIG_PATH=f"{omp_dir}/pkgconfig")
        found = pkg_config("openblas", env)
        if found is not None:
            return "openmp", found[0], found[1] + [f"-Wl,-rpath,{omp_dir}"]
    for name in ("openblas", "cblas"):
        found = pkg_config(name)
        if found is not None:
            return "other", found[0], found[1]
    return "other", ["-I/usr/include/x86_64-linux-gnu/openblas-pthread"], ["-lopenblas"]


blas_threading, blas_cflags, blas_libs = openblas_flags()
# import dmcp reads this before it loads dmcp._C (libgomp takes its wait policy
# from the environment when it is loaded): spinning idle threads pay off only
# when OpenBLAS shares them.
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "dmcp", "_build.py"), "w") as f:
    f.write('"""Written by setup.py: how dmcp._C was built."""\n'
            f"BLAS_THREADING = {blas_threading!r}   # 'openmp': OpenBLAS runs on OpenMP's threads\n")


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
native = os.environ.get("DMCP_NATIVE", "") not in ("", "0")
x86 = platform.machine().lower() in ("x86_64", "amd64")
# One build for every x86-64 from x86-64-v2 (SSE4.2) on; the hot kernels are
# also built for AVX2 and AVX-512 (csrc/isa/) and chosen at import.
# DMCP_NATIVE=1 tunes everything for the build machine instead.
march = ["-march=native"] if native else (["-march=x86-64-v2", "-mtune=generic"] if x86 else [])
if debug:
    # -fno-wrapv undoes the -fwrapv of CPython's CFLAGS, which would make signed overflow
    # defined and so silence UBSan's check of it; extra_compile_args come after those
    # CFLAGS on the compile line, so it wins (as -O0 wins over their -O3).
    opt = ["-O0", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
           "-fno-wrapv"] + march
    link_extra = ["-fsanitize=address,undefined"]
else:
    opt = ["-O3"] + march
    link_extra = []

# Kernel families built once per ISA through csrc/isa/<family>_<isa>.c.
ISA_FAMILIES = ("conv2d", "batchnorm", "activation")
# A family's files are <family>.c and <family>_<part>.c (conv2d_gemm.c, ...): the
# wrappers compile them together, once per ISA.
def isa_family_file(path):
    name = os.path.splitext(os.path.basename(path))[0]
    return any(name == f or name.startswith(f + "_") for f in ISA_FAMILIES)


sources = [f for f in sorted(glob.glob("csrc/*.c")) if not isa_family_file(f)]
sources += sorted(glob.glob("csrc/isa/*.c"))

ext = Extension(
    "dmcp._C",
    sources=sources,
    depends=sorted(glob.glob("csrc/*.h")) + [f for f in sorted(glob.glob("csrc/*.c"))
                                             if isa_family_file(f)],
    include_dirs=[numpy.get_include(), "csrc"],
    extra_compile_args=["-std=c11", "-fopenmp", "-Wall", "-Wno-unknown-pragmas"] + opt + blas_cflags
    + image_cflags,
    extra_link_args=["-fopenmp"] + blas_libs + image_libs + link_extra,
)

setup(ext_modules=[ext])
