"""The fuzz suite (tests/fuzz/) in CI: every target fuzzed for a few seconds from its
seed corpus with no finding, and every input a fuzzer once broke dmcp with
(tests/fuzz/regressions/<target>/) replayed.  Longer runs: tests/fuzz/run.py."""
import glob
import os
import sys

import pytest

atheris = pytest.importorskip("atheris", reason="atheris (the test extra) runs the fuzz targets")

FUZZ = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz")
sys.path.insert(0, FUZZ)

import run  # noqa: E402
import targets  # noqa: E402

SECONDS = 5             # per target: six targets, about 40 s in all with start-up
# libFuzzer's hang limit per input: run.py's 10 s, raised here because a shared CI
# machine once stalled a flip_horizontal input (0.5 s when replayed) past 10 s
HANG_FLAGS = ("--libfuzzer=-timeout=30",)


def test_every_target_is_registered_and_seeded():
    assert set(run.TARGET_NAMES) == set(targets.TARGETS)
    for name in run.TARGET_NAMES:
        assert os.listdir(os.path.join(run.CORPUS, name)), f"no seeds for {name}"
    # the shape-aware target reaches every function of the C core (bar the process-wide
    # malloc switch) and every one has seeds
    public = {n for n in dir(targets._C) if not n.startswith("_")} - {"keep_freed_memory"}
    assert public == set(targets.KERNEL_FUNCTIONS)
    seeded = {os.path.basename(p).rsplit("-", 1)[0]
              for p in glob.glob(os.path.join(run.CORPUS, "kernels", "*"))}
    assert seeded == public


@pytest.mark.parametrize("target", run.TARGET_NAMES)
def test_fuzz_target_has_no_findings(target, tmp_path):
    result = run.fuzz(target, SECONDS, str(tmp_path), HANG_FLAGS)
    assert result.execs > 0, f"{target}: the fuzzer ran nothing (see {result.log}):\n" \
                             f"{run._tail(result.log)}"
    assert not result.findings, f"{target}: {len(result.findings)} finding(s) " \
                                f"{result.findings}:\n{run._tail(result.log)}"


REGRESSIONS = sorted(glob.glob(os.path.join(run.REGRESSIONS, "*", "*")))


@pytest.mark.parametrize("path", REGRESSIONS,
                         ids=[os.path.relpath(p, run.REGRESSIONS) for p in REGRESSIONS])
def test_fuzz_regression(path):
    """Replays a saved input through its target (the folder name): it must end in an
    accepted error or none."""
    with open(path, "rb") as f:
        targets.check(os.path.basename(os.path.dirname(path)), f.read())


def test_the_seed_corpora_pass():
    for name in run.TARGET_NAMES:
        for path in sorted(glob.glob(os.path.join(run.CORPUS, name, "*"))):
            with open(path, "rb") as f:
                targets.check(name, f.read())
