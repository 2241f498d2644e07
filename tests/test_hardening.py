"""Inputs that once crashed, hung or read stray memory (issue: hardening): each now
gets a clear exception.  The C-boundary cases run in a subprocess, so a regression
shows as a failed test instead of a dead test runner."""
import collections
import os
import pickle
import subprocess
import sys
import textwrap
import time
import zipfile

import numpy as np
import pytest
import torch

import dmcp
from dmcp.checkpoint import read_checkpoint
from dmcp.config import ConfigError
from dmcp.units import UserError, load_subnet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_isolated(code):
    """Run code in a fresh interpreter; it must exit 0 (not crash) and print OK."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"exit {r.returncode}:\n{r.stderr[-2000:]}"
    assert r.stdout.strip().endswith("OK"), r.stdout


def test_two_bad_optional_arrays_raise_instead_of_crashing():
    run_isolated("""
        import numpy as np, pytest
        from dmcp import _C as C
        f32, f64 = np.float32, np.float64
        with pytest.raises(TypeError, match="linear_backward: argument 'dinp' must have dtype float32"):
            C.linear_backward(np.zeros((2, 3), f64), np.zeros((4, 3), f64), None,
                              np.zeros((2, 4), f32), np.zeros((2, 3), f32), np.zeros((4, 3), f32))
        x = np.zeros((1, 2, 4, 4), f32)
        with pytest.raises(TypeError, match="dinp"):
            C.conv2d_backward(np.zeros_like(x, f64), np.zeros((2, 2, 3, 3), f64), np.zeros(2, f64),
                              np.zeros((1, 2, 4, 4), f32), x, np.zeros((2, 2, 3, 3), f32),
                              1, 1, 1, 1, 1, 1, 1)
        with pytest.raises(TypeError, match="'P'"):
            C.batchnorm_backward(np.zeros_like(x), None, None, x, x, np.zeros(2, f32),
                                 np.ones(2, f32), np.ones(2, f32), True, False,
                                 P=np.ones(2, f64), dP=np.ones(2, f64), min_ch=0, group_size=1)
        print("OK")
    """)


def test_out_of_range_geometry_is_a_value_error():
    run_isolated("""
        import numpy as np, pytest
        from dmcp import _C as C
        big = 2**31 - 1
        img = np.zeros((2, 2, 3), np.uint8)
        with pytest.raises(ValueError, match="not inside"):
            C.resize_crop(np.zeros((4, 4, 3), np.uint8), img, big, 0, 1, 1)
        with pytest.raises(ValueError, match="not inside"):
            C.resize_crop(np.zeros((4, 4, 3), np.uint8), img, 0, 0, 1, 1, 8, 8, big, 0)
        x, w = np.zeros((2, 1, 4, 4), np.float32), np.zeros((1, 1, 1, 1), np.float32)
        for args in ((big, big, 0, 0, 1, 1), (1, 1, big, big, 1, 1), (1, 1, 0, 0, big, big)):
            with pytest.raises(ValueError, match="at most"):
                C.conv2d_forward(np.zeros((2, 1, 4, 4), np.float32), x, w, None, *args, 1)
        with pytest.raises(ValueError, match="padding"):
            C.maxpool2d_forward(np.zeros((2, 1, 4, 4), np.float32), np.zeros((2, 1, 4, 4), np.int32),
                                x, 1, 1, big)
        print("OK")
    """)


# ---------------------------------------------------------------- crafted .pth files

class _Storage:
    pass


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, self.args


def write_pth(path, offset, size, stride, numel=4, pid=None):
    """A PyTorch-format zip whose one tensor claims (offset, size, stride) over a
    float32 storage of numel elements."""
    storage = _Storage()

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if obj is storage:
                return pid if pid is not None else ("storage", torch.FloatStorage, "0", "cpu", numel)
            return None

    import io
    buf = io.BytesIO()
    Pickler(buf, protocol=2).dump({"w": _Tensor(storage, offset, size, stride)})
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/data/0", np.arange(numel, dtype=np.float32).tobytes())
    return path


def test_crafted_pth_is_read_when_in_bounds(tmp_path):
    got = read_checkpoint(write_pth(tmp_path / "ok.pth", 1, (3,), (1,)))
    np.testing.assert_array_equal(got["w"], [1, 2, 3])


@pytest.mark.parametrize("offset,size,stride,words", [
    (0, (50_000_000,), (1,), "reads element"),
    (0, (2, 2), (2**40, 1), "reads element"),
    (0, (3,), (-1,), "inconsistent"),
    (9, (1,), (1,), "reads element"),
    (-1, (1,), (1,), "inconsistent"),
    (0, (2, 2), (1,), "inconsistent"),
    (7, (), (), "outside its storage"),
])
def test_crafted_pth_outside_its_storage_is_a_user_error(tmp_path, offset, size, stride, words):
    with pytest.raises(UserError, match=words):
        read_checkpoint(write_pth(tmp_path / "bad.pth", offset, size, stride))


def test_pth_with_a_bad_persistent_id_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="persistent id"):
        read_checkpoint(write_pth(tmp_path / "pid.pth", 0, (1,), (1,), pid="storage"))


def test_truncated_pth_and_npz_are_user_errors(tmp_path):
    good = write_pth(tmp_path / "g.pth", 0, (4,), (1,))
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(UserError):
        read_checkpoint(cut)
    npz = tmp_path / "c.npz"
    np.savez(npz, **{"state_dict/a": np.zeros(1000, np.float32)})
    (tmp_path / "t.npz").write_bytes(npz.read_bytes()[:300])
    (tmp_path / "g.npz").write_bytes(b"\x00garbage" * 50)
    for name in ("t.npz", "g.npz"):
        with pytest.raises(UserError, match="not a readable dmcp checkpoint"):
            read_checkpoint(str(tmp_path / name))
    os.mkdir(tmp_path / "d.npz")
    with pytest.raises(UserError, match="directory"):
        read_checkpoint(str(tmp_path / "d.npz"))


# ---------------------------------------------------------------- configs and JSON

def test_yaml_alias_bomb_is_refused_quickly(tmp_path):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match="alias bomb"):
        dmcp.Config.fromfile(str(path))
    assert time.perf_counter() - t0 < 10


def test_self_referencing_yaml_and_deep_json_are_config_errors(tmp_path):
    (tmp_path / "self.yaml").write_text("a: &a\n  b: *a\n")
    with pytest.raises(ConfigError, match="refers to itself"):
        dmcp.Config.fromfile(str(tmp_path / "self.yaml"))
    (tmp_path / "deep.json").write_text('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(ConfigError, match="nested deeper"):
        dmcp.Config.fromfile(str(tmp_path / "deep.json"))


def test_fix_subnet_paths_that_are_not_json_text(tmp_path):
    with pytest.raises(UserError, match="is a directory"):
        load_subnet(str(tmp_path))
    (tmp_path / "bin.json").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(UserError, match="UTF-8"):
        load_subnet(str(tmp_path / "bin.json"))
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(UserError, match="nested too deeply"):
        load_subnet(str(tmp_path / "deep.json"))
