"""What the benchmarks share: one timing helper and one description of the
machine, libraries and settings a result was measured with."""
import ctypes
import os
import statistics
import sys
import time

# glibc settings equal to dmcp._C.keep_freed_memory()'s (M_MMAP_MAX 0, M_TRIM_THRESHOLD
# INT_MAX), for processes that do not import dmcp (PyTorch in the benchmarks).
KEEP_FREED_TUNABLES = {"glibc.malloc.mmap_max": "0", "glibc.malloc.trim_threshold": "2147483647"}
ISA_FLAGS = (("avx512f",), ("avx512_vnni", "avx512vnni"), ("avx2",), ("fma",))
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
              "OPENBLAS_THREAD_TIMEOUT", "OPENBLAS_CORETYPE")


def median_seconds(fn, reps, warmup=0):
    """Median wall time of ``reps`` calls of fn, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def tunables_env(env, keep_freed):
    """A copy of env whose GLIBC_TUNABLES holds the keep-freed-memory malloc settings
    (keep_freed True) or neither of them (False, glibc's defaults); any other
    tunables the user set are kept, glibc's older MALLOC_* spellings dropped."""
    pairs = [kv.split("=", 1) for kv in env.get("GLIBC_TUNABLES", "").split(":") if "=" in kv]
    pairs = [(k, v) for k, v in pairs if k not in KEEP_FREED_TUNABLES]
    if keep_freed:
        pairs += list(KEEP_FREED_TUNABLES.items())
    env = dict(env)
    for k in ("GLIBC_TUNABLES", "MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_"):
        env.pop(k, None)
    if pairs:
        env["GLIBC_TUNABLES"] = ":".join(f"{k}={v}" for k, v in pairs)
    return env


def _cpu():
    model, flags = "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                if key.strip() == "model name" and model == "unknown CPU":
                    model = val.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(val.split())
    except OSError:
        pass
    isa = [next(n for n in names if n in flags) for names in ISA_FLAGS if flags & set(names)]
    return model, " ".join(isa) or "none of avx512f/avx512_vnni/avx2/fma"


def _symbol(lib, names, restype):
    for n in names:
        try:
            fn = getattr(lib, n)
        except AttributeError:
            continue
        fn.restype, fn.argtypes = restype, []
        return fn
    return None


class _DlInfo(ctypes.Structure):
    _fields_ = [("dli_fname", ctypes.c_char_p), ("dli_fbase", ctypes.c_void_p),
                ("dli_sname", ctypes.c_char_p), ("dli_saddr", ctypes.c_void_p)]


def _library_of(fn):
    info = _DlInfo()
    if ctypes.CDLL(None).dladdr(ctypes.cast(fn, ctypes.c_void_p), ctypes.byref(info)):
        return os.path.realpath(info.dli_fname.decode())
    return None


def _openblas_paths():
    """Every mapped file with 'openblas' in its path (numpy brings its own too)."""
    try:
        with open("/proc/self/maps") as f:
            paths = [line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6]
    except OSError:
        return []
    return list(dict.fromkeys(os.path.realpath(p) for p in paths if "openblas" in os.path.basename(p)))


def _blas_symbol(base):
    """openblas_<base> under each prefix/suffix its builds export (Debian/upstream,
    scipy-openblas32, scipy-openblas64 / INTERFACE64)."""
    return (f"openblas_{base}", f"scipy_openblas_{base}", f"scipy_openblas_{base}64_",
            f"openblas_{base}64_")


def dmcp_native():
    """What dmcp._C runs on, from the libraries it links: OpenBLAS config, core
    name, thread count and path, and OpenMP's max thread count.  Symbols are
    looked up through dmcp._C's own handle (dlsym searches the dependencies it
    was linked against), so numpy's bundled OpenBLAS is never the one reported."""
    from dmcp import _C
    own = ctypes.CDLL(_C.__file__, mode=os.RTLD_NOLOAD)
    out = {}
    lib = own
    config = _symbol(lib, _blas_symbol("get_config"), ctypes.c_char_p)
    if config is None:          # linked some other way: try each mapped openblas
        for path in _openblas_paths():
            if "numpy" in path:
                continue
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD)
            config = _symbol(lib, _blas_symbol("get_config"), ctypes.c_char_p)
            if config is not None:
                break
    if config is not None:
        core = _symbol(lib, _blas_symbol("get_corename"), ctypes.c_char_p)
        nthr = _symbol(lib, _blas_symbol("get_num_threads"), ctypes.c_int)
        out["openblas_config"] = config().decode()
        out["openblas_core"] = core().decode() if core else "?"
        out["openblas_threads"] = nthr() if nthr else None
        out["openblas_path"] = _library_of(config)
    omp = _symbol(own, ("omp_get_max_threads",), ctypes.c_int)
    out["omp_threads"] = omp() if omp else None
    return out


def allocator_settings(env=None, dmcp_imported=None):
    """The malloc settings a process with environment env runs with (this one by default)."""
    env = os.environ if env is None else env
    if dmcp_imported is None:
        dmcp_imported = "dmcp" in sys.modules
    got = []
    if dmcp_imported and env.get("DMCP_KEEP_FREED_MEMORY", "1") != "0":
        got.append("dmcp keep_freed_memory() (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=INT_MAX)")
    if env.get("GLIBC_TUNABLES"):
        got.append(f"GLIBC_TUNABLES={env['GLIBC_TUNABLES']}")
    got += [f"{k}={env[k]}" for k in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_") if k in env]
    return "; ".join(got) or "glibc defaults"


def describe_machine(threads=None):
    """Lines to print at the top of every benchmark: CPU, ISA, threads, OpenBLAS
    dmcp links, PyTorch (when imported), thread/allocator settings in force.
    Imports dmcp (whose import sets this process's allocator and thread env)."""
    model, isa = _cpu()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [f"CPU: {model}; ISA: {isa}; {os.cpu_count()} logical CPUs; load average {load} "
             "(other work on the CPUs skews every timing)"]
    nat = dmcp_native()
    thr = "threads: " + (f"{threads}; " if threads is not None else "")
    thr += (f"in this process OpenMP max {nat.get('omp_threads')}, "
            f"OpenBLAS {nat.get('openblas_threads')}")
    if "torch" in sys.modules:
        thr += f", PyTorch {sys.modules['torch'].get_num_threads()}"
    lines.append(thr)
    from dmcp import _C
    lines.append(f"dmcp kernels: {_C.isa()} variant (available {', '.join(_C.isa_available())}; "
                 f"DMCP_ISA picks another)")
    if "openblas_config" in nat:
        lines.append(f"OpenBLAS (dmcp._C): {nat['openblas_config']}; core {nat['openblas_core']}; "
                     f"{nat['openblas_path']}")
    else:
        lines.append("OpenBLAS (dmcp._C): not found through dmcp._C or /proc/self/maps")
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        cap = torch.backends.cpu.get_cpu_capability()
        lines.append(f"PyTorch {torch.__version__}, CPU capability {cap}, "
                     f"MKL {torch.backends.mkl.is_available()}")
    lines.append("env: " + ", ".join(f"{k}={os.environ.get(k, '(unset)')}" for k in THREAD_ENV))
    lines.append(f"allocator (this process): {allocator_settings()}")
    return lines
