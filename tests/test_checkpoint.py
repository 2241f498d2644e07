"""PyTorch checkpoints read without PyTorch (dmcp/checkpoint.py): torchvision and
mmcls key layouts, dtypes and views, strict checks, and clear errors for
files that are not checkpoints.  PyTorch only writes the files here."""
import os
import pathlib
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch

from dmcp.checkpoint import read_checkpoint
from dmcp.units import UserError

from test_models import RefClassifier, build_dmcp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_state(ref, seed=0):
    """The reference model's state dict (mmcls names) filled with distinct random values."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in ref.state_dict().items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.randint(1, 10000, (), generator=g, dtype=torch.int64)
        elif k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=g) + 0.5
        else:
            out[k] = torch.randn(v.shape, generator=g)
    return out


def torchvision_resnet_name(k):
    """mmcls -> torchvision ResNet: drop 'backbone.' and 'head.'."""
    return k[len("backbone."):] if k.startswith("backbone.") else k[len("head."):]


def torchvision_mbv2_name(k, expand):
    """mmcls -> torchvision MobileNetV2 (features.N, Conv2dNormActivation, classifier.1).
    ``expand``: {mmcls block prefix 'backbone.layerS.B': has an expand conv}."""
    pre, leaf = k.rsplit(".", 1)
    parts = pre.split(".")
    if parts[0] == "head":
        return f"classifier.1.{leaf}"
    if parts[1] == "conv1":
        return f"features.0.{0 if parts[2] == 'conv' else 1}.{leaf}"
    if parts[1] == "conv2":
        return f"features.18.{0 if parts[2] == 'conv' else 1}.{leaf}"
    blocks = list(expand)
    block = ".".join(parts[:3])
    i = blocks.index(block) + 1
    j = int(parts[4])                     # ConvModule index in mmcls's block
    last = 2 if expand[block] else 1
    if j < last:
        return f"features.{i}.conv.{j}.{0 if parts[5] == 'conv' else 1}.{leaf}"
    return f"features.{i}.conv.{last if parts[5] == 'conv' else last + 1}.{leaf}"


def mbv2_expand_table():
    table = {}
    for s, (t, c, n, stride) in enumerate(((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                                           (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))):
        for b in range(n):
            table[f"backbone.layer{s + 1}.{b}"] = t != 1
    return table


def assert_loaded(model, state):
    sd = model.state_dict()
    assert set(sd) == set(state)
    for k, v in state.items():
        got = np.asarray(sd[k])
        want = v.numpy()
        assert got.shape == want.shape, k
        if k.endswith("num_batches_tracked"):
            assert got.dtype == np.int64 and int(got) == int(want), k
        else:
            assert got.dtype == np.float32, k
            np.testing.assert_array_equal(got, want, err_msg=k)


# ---------------------------------------------------------------------------
# layouts
# ---------------------------------------------------------------------------

def test_torchvision_resnet18_layout(tmp_path):
    ref = RefClassifier("resnet18")
    state = random_state(ref)
    tv = {torchvision_resnet_name(k): v for k, v in state.items()}
    assert "conv1.weight" in tv and "layer1.0.conv1.weight" in tv and "fc.weight" in tv
    assert "layer2.0.downsample.1.running_var" in tv
    path = tmp_path / "resnet18-tv.pth"
    torch.save(tv, path)
    model = build_dmcp("resnet18")
    model.load_state_dict(str(path))
    assert_loaded(model, state)


def test_torchvision_layout_with_module_prefix(tmp_path):
    """DataParallel checkpoints carry 'module.' in front of every key."""
    ref = RefClassifier("cifar20", 10, 1)
    state = random_state(ref, seed=1)
    path = tmp_path / "dp.pth"
    torch.save({"module." + k: v for k, v in state.items()}, path)
    model = build_dmcp("cifar20")
    model.load_state_dict(str(path))
    assert_loaded(model, state)


def test_load_accepts_a_pathlib_path(tmp_path):
    ref = RefClassifier("cifar20", 10, 1)
    state = random_state(ref, seed=2)
    path = tmp_path / "p.pth"
    torch.save(state, path)
    model = build_dmcp("cifar20")
    model.load_state_dict(pathlib.Path(path))
    assert_loaded(model, state)


class HistoryBuffer:
    """Stands in for mmengine's logging objects pickled into a checkpoint's message_hub."""

    def __init__(self):
        self.data = [1.0, 2.0]


def test_mmcls_checkpoint_with_meta(tmp_path):
    ref = RefClassifier("mbv2")
    state = random_state(ref, seed=3)
    ckpt = {"meta": {"epoch": 3, "iter": 1500, "mmcls_version": "0.25.0", "seed": 2020,
                     "CLASSES": ("cat", "dog"), "hook_msgs": {"last_ckpt": "epoch_3.pth"},
                     "config": "model = dict(type='ImageClassifier')", "lr": 0.1,
                     "dataset_meta": {"classes": ["cat", "dog"]}},
            "state_dict": state,
            "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(4)}},
                          "param_groups": [{"lr": 0.1, "momentum": 0.9, "params": [0]}]}}
    path = tmp_path / "epoch_3.pth"
    torch.save(ckpt, path)
    model = build_dmcp("mbv2")
    model.load_state_dict(str(path))
    assert_loaded(model, state)


def test_mmengine_checkpoint_with_pickled_objects(tmp_path):
    """mmengine's CheckpointHook pickles logging objects (message_hub) next to the
    state dict; reading the weights must not need their classes."""
    ref = RefClassifier("cifar20", 10, 1)
    state = random_state(ref, seed=4)
    ckpt = {"meta": {"epoch": 1}, "state_dict": state,
            "message_hub": {"log_scalars": {"train/loss": HistoryBuffer()}}}
    path = tmp_path / "mmengine.pth"
    torch.save(ckpt, path)
    model = build_dmcp("cifar20")
    model.load_state_dict(str(path))
    assert_loaded(model, state)


def test_checkpoint_with_numpy_values_in_meta(tmp_path):
    """NumPy arrays and scalars next to the weights (mmengine's HistoryBuffer keeps
    its history as NumPy arrays) do not stop the weights from loading."""
    ref = RefClassifier("cifar20", 10, 1)
    state = random_state(ref, seed=4)
    ckpt = {"meta": {"epoch": 1, "np_seed": np.int64(2020), "lr": np.float64(0.5),
                     "history": np.arange(3.0)}, "state_dict": state}
    path = tmp_path / "np_meta.pth"
    torch.save(ckpt, path)
    model = build_dmcp("cifar20")
    model.load_state_dict(str(path))
    assert_loaded(model, state)


def test_torchvision_mobilenetv2_layout(tmp_path):
    ref = RefClassifier("mbv2")
    state = random_state(ref, seed=5)
    expand = mbv2_expand_table()
    tv = {torchvision_mbv2_name(k, expand): v for k, v in state.items()}
    assert len(tv) == len(state)
    for k in ["features.0.0.weight", "features.0.1.running_mean", "features.1.conv.0.0.weight",
              "features.1.conv.1.weight", "features.1.conv.2.bias", "features.2.conv.0.0.weight",
              "features.2.conv.1.0.weight", "features.2.conv.2.weight", "features.2.conv.3.weight",
              "features.17.conv.3.num_batches_tracked", "features.18.0.weight", "features.18.1.bias",
              "classifier.1.weight", "classifier.1.bias"]:
        assert k in tv, k
    assert tv["features.2.conv.1.0.weight"].shape == (96, 1, 3, 3)       # depthwise
    assert tv["features.18.0.weight"].shape == (1280, 320, 1, 1)
    path = tmp_path / "mobilenet_v2-tv.pth"
    torch.save(tv, path)
    model = build_dmcp("mbv2")
    model.load_state_dict(str(path))
    assert_loaded(model, state)


def test_dtypes_views_and_scalars_are_read_exactly(tmp_path):
    """Every storage type torch.save writes for weights, tensors that are views
    (transposed, offset into a shared storage), 0-d tensors."""
    big = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    d = {"f32": torch.randn(3, 4), "f64": torch.randn(5, dtype=torch.float64),
         "f16": torch.randn(3).half(), "i64": torch.tensor(7), "i32": torch.arange(4, dtype=torch.int32),
         "u8": torch.arange(3, dtype=torch.uint8), "bool": torch.tensor([True, False]),
         "transposed": big.t(), "offset": big[2:], "column": big[:, 3], "empty": torch.zeros(0, 3)}
    path = tmp_path / "dtypes.pth"
    torch.save(d, path)
    got = read_checkpoint(str(path))
    for k, v in d.items():
        assert got[k].dtype == v.numpy().dtype, k
        assert got[k].shape == tuple(v.shape), k
        np.testing.assert_array_equal(got[k], v.numpy(), err_msg=k)
    torch.save({"w": torch.randn(2).bfloat16()}, tmp_path / "bf16.pth")
    with pytest.raises(UserError, match="BFloat16"):
        read_checkpoint(str(tmp_path / "bf16.pth"))


def test_float64_and_float16_weights_load_as_float32(tmp_path):
    ref = RefClassifier("cifar20", 10, 1)
    state = random_state(ref, seed=6)
    doubled = {k: (v.double() if v.is_floating_point() else v) for k, v in state.items()}
    torch.save(doubled, tmp_path / "d.pth")
    model = build_dmcp("cifar20")
    model.load_state_dict(str(tmp_path / "d.pth"))
    assert_loaded(model, {k: (v.float() if v.is_floating_point() else v) for k, v in doubled.items()})


def test_loaded_arrays_are_the_models_own(tmp_path):
    """Loading copies into the model's arrays: the parameters stay the objects
    the optimiser holds and stay writable, float32 and C-contiguous."""
    ref = RefClassifier("cifar20", 10, 1)
    state = random_state(ref, seed=7)
    torch.save(state, tmp_path / "s.pth")
    model = build_dmcp("cifar20")
    params = {n: p for n, p in model.named_parameters()}
    data_ids = {n: id(p.data) for n, p in params.items()}
    model.load_state_dict(str(tmp_path / "s.pth"))
    for n, p in model.named_parameters():
        assert p is params[n] and id(p.data) == data_ids[n]
        assert p.data.flags.writeable and p.data.flags.c_contiguous and p.data.dtype == np.float32
    x = np.random.default_rng(0).normal(size=(2, 1, 12, 12)).astype(np.float32)
    model.eval()
    ref.load_state_dict(state)
    ref.double().eval()
    with torch.no_grad():
        want = ref(torch.from_numpy(x.astype(np.float64))).numpy()
    np.testing.assert_allclose(model(x), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


# ---------------------------------------------------------------------------
# strictness and errors
# ---------------------------------------------------------------------------

@pytest.fixture
def r18_state():
    return random_state(RefClassifier("resnet18"), seed=8)


def test_missing_keys_are_a_user_error(tmp_path, r18_state):
    tv = {torchvision_resnet_name(k): v for k, v in r18_state.items()}
    del tv["layer3.1.bn2.running_var"]
    del tv["fc.bias"]
    torch.save(tv, tmp_path / "m.pth")
    model = build_dmcp("resnet18")
    with pytest.raises(UserError) as e:
        model.load_state_dict(str(tmp_path / "m.pth"))
    assert "backbone.layer3.1.bn2.running_var" in str(e.value) and "head.fc.bias" in str(e.value)
    assert "m.pth" in str(e.value)
    # non-strict: the rest loads and the missing keys are reported
    missing, unexpected = model.load_state_dict(str(tmp_path / "m.pth"), strict=False)
    assert sorted(missing) == ["backbone.layer3.1.bn2.running_var", "head.fc.bias"]
    assert unexpected == []
    np.testing.assert_array_equal(model.head.fc.weight.data, r18_state["head.fc.weight"].numpy())


def test_unexpected_keys_are_a_user_error(tmp_path, r18_state):
    tv = {torchvision_resnet_name(k): v for k, v in r18_state.items()}
    tv["layer5.0.conv1.weight"] = torch.zeros(3)
    torch.save(tv, tmp_path / "u.pth")
    model = build_dmcp("resnet18")
    with pytest.raises(UserError, match="layer5.0.conv1.weight"):
        model.load_state_dict(str(tmp_path / "u.pth"))


@pytest.mark.parametrize("key,shape", [
    ("layer2.0.conv1.weight", (128, 64, 3)),         # wrong rank
    ("layer2.0.conv1.weight", (96, 64, 3, 3)),       # fewer output channels
    ("bn1.running_mean", (32,)),
    ("conv1.weight", (64, 3, 7, 9)),                 # larger kernel
    ("fc.weight", (1001, 512)),                      # more classes than the head
    ("layer1.0.conv2.weight", (64, 80, 3, 3)),       # more input channels
])
def test_wrong_shapes_are_a_user_error(tmp_path, r18_state, key, shape):
    tv = {torchvision_resnet_name(k): v for k, v in r18_state.items()}
    tv[key] = torch.zeros(shape)
    torch.save(tv, tmp_path / "w.pth")
    model = build_dmcp("resnet18")
    with pytest.raises(UserError) as e:
        model.load_state_dict(str(tmp_path / "w.pth"))
    msg = str(e.value)
    assert key in msg and str(tuple(shape)) in msg, msg


def test_non_checkpoint_files_are_a_user_error(tmp_path):
    model = build_dmcp("cifar20")
    cases = {"text.pth": b"this is not a checkpoint\n",
             "random.pth": np.random.default_rng(0).bytes(4096),
             "empty.pth": b""}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    with zipfile.ZipFile(tmp_path / "nopkl.pth", "w") as z:
        z.writestr("archive/data/0", b"\0" * 16)
    with zipfile.ZipFile(tmp_path / "badpkl.pth", "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02garbage")
    torch.save({"w": torch.zeros(3)}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    torch.save([torch.zeros(3)], tmp_path / "list.pth")
    for name in list(cases) + ["nopkl.pth", "badpkl.pth", "legacy.pth", "list.pth", "missing.pth"]:
        with pytest.raises(UserError) as e:
            model.load_state_dict(str(tmp_path / name))
        assert name in str(e.value), (name, str(e.value))


def test_reading_does_not_import_torch(tmp_path):
    ref = RefClassifier("cifar20", 10, 1)
    state = random_state(ref, seed=9)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": state, "meta": {"epoch": 1}}, path)
    want = float(state["backbone.layer3.2.conv2.weight"].sum())
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        import dmcp
        m = dmcp.build_model(dict(type='ImageClassifier',
                                  backbone=dict(type='ResNet_CIFAR', depth=20, in_channels=1),
                                  head=dict(num_classes=10)))
        m.load_state_dict({str(path)!r})
        got = float(m.state_dict()['backbone.layer3.2.conv2.weight'].sum(dtype=np.float64))
        assert abs(got - {want!r}) < 1e-3 * (1 + abs(got)), got
        print('torch' in sys.modules, any(k.startswith('torch.') for k in sys.modules))
    """)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       cwd=str(tmp_path), timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "False"], r.stdout
