"""Shared fixtures: a seeded NumPy generator and a closeness check that keeps
the largest error seen per kernel family (printed at the end of the run)."""
import os
import sys

import numpy as np
import pytest

try:                                    # run against the in-place build
    import dmcp  # noqa: F401
except ImportError:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_MAX_ERR = {}                           # family -> (max abs error, max relative-to-scale error)


def _isas():
    import dmcp
    return dmcp._C.isa_available()


@pytest.fixture(params=_isas())
def isa(request):
    """Run a test once per kernel variant this CPU can run (base, avx2, avx512)."""
    import dmcp
    prev = dmcp._C.isa()
    dmcp._C.set_isa(request.param)
    yield request.param
    dmcp._C.set_isa(prev)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def close():
    """close(got, want, family, rtol, atol): assert |got - want| <= atol + rtol * max|want|
    elementwise (a normwise bound: reductions may cancel to near zero) and log the error."""

    def check(got, want, family, rtol=1e-4, atol=1e-5):
        got = np.asarray(got, dtype=np.float64)
        want = np.asarray(want, dtype=np.float64)
        assert got.shape == want.shape, f"{family}: shape {got.shape} != {want.shape}"
        scale = float(np.abs(want).max()) if want.size else 0.0
        err = float(np.abs(got - want).max()) if want.size else 0.0
        old = _MAX_ERR.get(family, (0.0, 0.0))
        _MAX_ERR[family] = (max(old[0], err), max(old[1], err / max(scale, 1e-30)))
        bound = atol + rtol * scale
        assert err <= bound, f"{family}: max abs error {err:.3g} > {bound:.3g} (max |want| {scale:.3g})"

    return check


def pytest_terminal_summary(terminalreporter):
    if not _MAX_ERR:
        return
    terminalreporter.section("max errors vs reference (abs, abs / max|ref|)")
    for family in sorted(_MAX_ERR):
        a, r = _MAX_ERR[family]
        terminalreporter.write_line(f"{family:32s} {a:10.3g} {r:10.3g}")
