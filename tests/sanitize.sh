#!/usr/bin/env bash
# The C core's tests again on a sanitizer build (AddressSanitizer + UBSan,
# -O0 -g, -fno-wrapv so signed overflow is reported), next to the release
# build rather than over it:
#     bash tests/sanitize.sh [PYTEST ARGS...]
# builds dmcp._C with DMCP_DEBUG=1 into build/sanitize/dmcp/ (beside a copy of
# the Python package), then runs the kernel, bad-input, data, units and
# checkpoint tests against it with the sanitizer runtimes preloaded.  Any
# report (out-of-bounds access, use after free, signed overflow, misaligned
# or out-of-range shifts, ...) aborts the run with a non-zero exit.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
OUT=build/sanitize

echo "sanitizer build of dmcp._C in $OUT"
rm -rf "$OUT/dmcp"
mkdir -p "$OUT"
DMCP_DEBUG=1 "$PY" setup.py -q build_ext --build-lib "$OUT" --build-temp "$OUT/tmp" >/dev/null
# the Python package beside the sanitizer build (not the release .so)
tar --exclude='*.so' --exclude=__pycache__ -cf - dmcp | tar -xf - -C "$OUT"

ASAN_LIB="$(gcc -print-file-name=libasan.so)"
UBSAN_LIB="$(gcc -print-file-name=libubsan.so)"
[ -f "$ASAN_LIB" ] && [ -f "$UBSAN_LIB" ] || { echo "gcc's sanitizer runtimes not found" >&2; exit 1; }

# CPython and NumPy are not built with ASan: leaks at exit are theirs (off);
# PyTorch (the reference) allocates with its own operators (mismatch off).
export LD_PRELOAD="$ASAN_LIB:$UBSAN_LIB"
export ASAN_OPTIONS="detect_leaks=0:alloc_dealloc_mismatch=0:detect_odr_violation=0:abort_on_error=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export PYTHONPATH="$PWD/$OUT"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
ROOT="$PWD"
PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")"
# from inside $OUT, so that neither the checkout's dmcp/ (the current directory
# comes first on sys.path) nor the editable install is the one imported
cd "$OUT"
"$PY" -c "
import dmcp._C as C
assert '/$OUT/' in C.__file__, C.__file__
assert 'libasan' in open('/proc/self/maps').read(), 'AddressSanitizer is not loaded'
print('testing', C.__file__, 'with ASan and UBSan')"
# The F(4x4) backward-weight cases (128 channels) take minutes per ISA in the
# -O0 naive reference; their fast path still runs here in the thread- and
# ISA-independence test.
exec "$PY" -m pytest -q -p no:cacheprovider --rootdir "$ROOT" -k "not wino4_dw" "$@" \
    "$ROOT"/tests/test_kernels.py "$ROOT"/tests/test_bad_input.py "$ROOT"/tests/test_data.py \
    "$ROOT"/tests/test_units.py "$ROOT"/tests/test_checkpoint.py
