"""Inputs that once crashed, hung or read stray memory (issue: hardening): each now
gets a clear exception.  The C-boundary cases run in a subprocess, so a regression
shows as a failed test instead of a dead test runner."""
import collections
import json
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


# ---------------------------------------------------------------- --resume and load_from

def tiny_cfg(optimizer=None, **top):
    """A plain ResNet-8 on four synthetic 8x8 images: one epoch is two iterations."""
    ds = dict(type="SyntheticDataset", num_samples=4, num_classes=3, image_shape=(1, 8, 8))
    return dmcp.Config(dict(
        model=dict(type="ImageClassifier",
                   backbone=dict(type="ResNet_CIFAR", depth=8, in_channels=1),
                   head=dict(type="LinearClsHead", num_classes=3, topk=(1,))),
        train_dataloader=dict(batch_size=2, num_workers=0, dataset=ds,
                              sampler=dict(type="DefaultSampler", shuffle=True)),
        optim_wrapper=dict(optimizer=optimizer or dict(type="SGD", lr=0.1, momentum=0.9)),
        train_cfg=dict(by_epoch=True, max_epochs=1),
        default_hooks=dict(logger=dict(interval=1)), **top))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(work dir, epoch_1.npz entries) of one epoch of tiny_cfg."""
    from dmcp.runner import Runner
    wd = str(tmp_path_factory.mktemp("trained"))
    Runner(tiny_cfg(), work_dir=wd).train()
    with np.load(os.path.join(wd, "epoch_1.npz")) as z:
        return wd, {k: z[k] for k in z.files}


def rewrite(tmp_path, files, name="ckpt.npz", **change):
    """The checkpoint with entries replaced (None drops one)."""
    files = dict(files)
    for k, v in change.items():
        k = k.replace("__", "/")
        if v is None:
            files.pop(k)
        else:
            files[k] = v
    path = str(tmp_path / name)
    np.savez(path, **files)
    return path


def meta_bytes(meta):
    return np.frombuffer(meta if isinstance(meta, bytes) else json.dumps(meta).encode(), np.uint8)


def resume(cfg, path, tmp_path):
    from dmcp.runner import Runner
    return Runner(cfg, work_dir=str(tmp_path / "wd"), resume=path)


GOOD_META = dict(epoch=1, iter=2, rng=np.random.default_rng(0).bit_generator.state)


@pytest.mark.parametrize("meta, message", [
    (b"\xff\xfe\x00", r"entry 'meta' is not UTF-8 text"),
    (b"{epoch: 1", r"entry 'meta' is not JSON"),
    (b"[1, 2]", r"entry 'meta' is not a JSON object"),
    (dict(GOOD_META, epoch=None), r"entry 'meta': epoch=None is not a non-negative integer"),
    ({k: v for k, v in GOOD_META.items() if k != "iter"}, r"entry 'meta': no 'iter'"),
    (dict(GOOD_META, iter="2"), r"entry 'meta': iter='2' is not a non-negative integer"),
    (dict(GOOD_META, rng=dict(bit_generator="MT19937")), r"entry 'meta': 'rng' is not a PCG64 state"),
    (dict(GOOD_META, rng=None), r"entry 'meta': 'rng' is not a PCG64 state"),
    (dict(GOOD_META, iter=7), r"entry 'meta': epoch 1 / iteration 7 do not fit this config's 2 iterations"),
])
def test_resume_with_a_bad_meta_names_the_file_and_the_entry(trained, tmp_path, meta, message):
    path = rewrite(tmp_path, trained[1], meta=meta_bytes(meta))
    with pytest.raises(UserError, match=rf"^--resume: '{path}': {message}") as info:
        resume(tiny_cfg(), path, tmp_path)
    assert "\n" not in str(info.value)
    resume(tiny_cfg(), rewrite(tmp_path, trained[1], "ok.npz", meta=meta_bytes(GOOD_META)),
           tmp_path)


def test_resume_without_optimizer_state_points_to_load_from(trained, tmp_path):
    no_opt = {k: v for k, v in trained[1].items() if not k.startswith("optimizer/")}
    path = rewrite(tmp_path, no_opt)
    with pytest.raises(UserError, match=rf"'{path}' has no optimizer state; to start from its "
                                        rf"weights .* use --cfg-options load_from={path}"):
        resume(tiny_cfg(), path, tmp_path)
    # without momentum SGD keeps no state: nothing is missing
    resume(tiny_cfg(dict(type="SGD", lr=0.1)), path, tmp_path)
    slim = rewrite(tmp_path, trained[1], "slim.npz", meta=None)
    with pytest.raises(UserError, match=r"not a dmcp training checkpoint \(no 'meta' entry\); "
                                        r".*load_from="):
        resume(tiny_cfg(), slim, tmp_path)
    pth = write_pth(tmp_path / "w.pth", 0, (4,), (1,))
    with pytest.raises(UserError, match=r"w\.pth' is not a dmcp training checkpoint .*load_from="):
        resume(tiny_cfg(), str(pth), tmp_path)


@pytest.mark.parametrize("optimizer, change, message", [
    (dict(type="Adam", lr=0.1), {}, r"entry 'backbone\.conv1\.weight\.momentum_buffer' is SGD "
                                    r"state, but the config's optimizer is Adam"),
    (None, {"optimizer__backbone.conv1.weight.momentum_buffer": np.zeros((2, 2), np.float32)},
     r"entry 'backbone\.conv1\.weight\.momentum_buffer' has shape \(2, 2\)"),
    (None, {"optimizer__backbone.conv9.weight.momentum_buffer": np.zeros(3, np.float32)},
     r"entry 'backbone\.conv9\.weight\.momentum_buffer' names no parameter .*did you mean "
     r"'backbone\.conv1\.weight'"),
    (None, {"optimizer__head.fc.bias.momentum_buffer": None}, r"no state for 1 entry "
                                                               r"\(head\.fc\.bias\)"),
])
def test_resume_with_mismatched_optimizer_state(trained, tmp_path, optimizer, change, message):
    path = rewrite(tmp_path, trained[1], **change)
    with pytest.raises(UserError, match=rf"'{path}' optimizer: {message}"):
        resume(tiny_cfg(optimizer), path, tmp_path)


def test_load_from_starts_from_the_weights_at_epoch_0(trained, tmp_path):
    from dmcp.runner import Runner
    wd, files = trained
    ckpt = os.path.join(wd, "epoch_1.npz")
    runner = Runner(tiny_cfg(load_from=ckpt), work_dir=str(tmp_path / "a"))
    assert (runner.epoch, runner.iter) == (0, 0) and not runner.optimizer.state
    for k, v in runner.model.state_dict().items():
        assert np.array_equal(v, files[f"state_dict/{k}"]), k
    # mmengine: resume=True continues load_from
    runner = Runner(tiny_cfg(load_from=ckpt, resume=True), work_dir=str(tmp_path / "b"))
    assert (runner.epoch, runner.iter) == (1, 2) and runner.optimizer.state
    with pytest.raises(UserError, match=r"load_from: checkpoint '.*nowhere\.npz' does not exist"):
        Runner(tiny_cfg(load_from=str(tmp_path / "nowhere.npz")), work_dir=str(tmp_path / "c"))
    with pytest.raises(UserError, match=r"resume='yes': must be True or False"):
        Runner(tiny_cfg(resume="yes"), work_dir=str(tmp_path / "c"))


def test_train_tool_prints_a_bad_resume_as_one_line(trained, tmp_path):
    cfg = tmp_path / "tiny.py"
    tiny_cfg().dump(str(cfg))
    path = rewrite(tmp_path, trained[1], meta=meta_bytes(b"\xff"))
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "train.py"), str(cfg),
                        "--work-dir", str(tmp_path / "wd"), "--resume", path],
                       capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip() == f"error: --resume: '{path}': entry 'meta' is not UTF-8 text"


def test_memory_stays_flat_over_a_long_run(tmp_path):
    """Resident memory after warm-up does not grow with DMCP iterations (weight and
    architecture steps, evaluations): a leaked activation would add MiBs per sample."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                    "benchmarks"))
    from bench_leak import long_run
    samples = long_run(160, 40, 32, str(tmp_path))
    rss = [r for _, r in samples]
    assert rss[-1] - rss[0] < 8.0, samples        # from iteration 40 to 160
