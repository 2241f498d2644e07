"""tools/export.py: pruned ResNet-18, ResNet-50 and MobileNetV2 subnets written as
ONNX (run by onnxruntime), slim .pth (loaded by PyTorch into an independent
model built at the slim widths) and slim .npz; width rounding; bad input."""
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import dmcp
from dmcp.algorithm import Structure, build_pruned, supernet_of
from dmcp.checkpoint import read_checkpoint, read_pth
from dmcp.cli import load_config
from dmcp.export import export_main
from dmcp.units import Rounding, UserError, make_divisible

from test_models import RefClassifier, randomize

SIZE = 64          # input side: small enough for CI, large enough for every stride
BACKBONES = {
    "resnet18": dict(type="ResNet", depth=18),
    "resnet50": dict(type="ResNet", depth=50),
    "mbv2": dict(type="MobileNetV2", widen_factor=1.0),
}


def write_config(tmp_path, arch, divisor=1):
    """A DMCP supernet config for ``arch`` at SIZE x SIZE, 10 classes."""
    path = tmp_path / f"{arch}_supernet.py"
    path.write_text(f"""
model = dict(
    type='DMCP',
    architecture=dict(type='ImageClassifier', backbone={BACKBONES[arch]!r},
                      neck=dict(type='GlobalAveragePooling'),
                      head=dict(type='LinearClsHead', num_classes=10)),
    mutator_cfg=dict(type='DMCPChannelMutator',
                     channel_unit_cfg=dict(type='DMCPChannelUnit',
                                           default_args=dict(choice_mode='number',
                                                             divisor={divisor})),
                     parse_cfg=dict(type='ChannelAnalyzer', demo_input=(1, 3, {SIZE}, {SIZE}),
                                    tracer_type='BackwardTracer')),
    target_flops=100)
""")
    return str(path)


def supernet_checkpoint(tmp_path, config, seed):
    """A supernet .npz with random BN statistics (as a trained one would have)."""
    cfg = load_config(config)
    model = dmcp.build_model(cfg["model"], seed=seed)
    randomize(model.architecture, np.random.default_rng(seed))
    path = str(tmp_path / "supernet.npz")
    np.savez(path, **{f"state_dict/{k}": v for k, v in model.state_dict().items()})
    return model, path


def random_subnet(tmp_path, model, seed):
    """A random structure from the supernet's search space (rounded by its mutator)."""
    model.mutator.set_widths("random", np.random.default_rng(seed))
    path = str(tmp_path / "subnet.json")
    with open(path, "w") as f:
        json.dump(model.mutator.export_subnet((1, 3, SIZE, SIZE)), f)
    widths = model.mutator.widths()
    model.mutator.set_widths("max")
    return path, widths


CASES = [("resnet18", 1), ("resnet50", 1), ("mbv2", 8)]


@pytest.fixture(scope="module", params=CASES, ids=[f"{a}-div{d}" for a, d in CASES])
def exported(request, tmp_path_factory):
    arch, divisor = request.param
    tmp_path = tmp_path_factory.mktemp(arch)
    config = write_config(tmp_path, arch, divisor)
    model, ckpt = supernet_checkpoint(tmp_path, config, seed=3)
    subnet, widths = random_subnet(tmp_path, model, seed=5)
    files = {}
    for fmt in ("onnx", "pth", "npz"):
        files[fmt] = str(tmp_path / f"pruned.{fmt}")
        assert export_main([config, ckpt, "--subnet", subnet, "--out", files[fmt]]) == 0
    cfg = load_config(config)
    slim = build_pruned(cfg["model"]["architecture"], subnet, supernet=model)
    slim.eval()
    x = np.random.default_rng(7).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)
    return dict(arch=arch, divisor=divisor, config=config, ckpt=ckpt, subnet=subnet, files=files,
                widths=widths, full={u.name: u.num_channels for u in model.mutator.units}, slim=slim, x=x, logits=slim.forward(x), tmp=tmp_path)


def test_structure_is_pruned_and_rounded(exported):
    full, w = exported["full"], exported["widths"]
    assert any(w[n] < full[n] for n in w), "the random structure prunes something"
    if exported["divisor"] > 1:
        d = exported["divisor"]
        assert all(v % d == 0 or v == full[n] for n, v in w.items()), w
    assert {n: u.num_channels for n, u in exported["slim"].units.items()} == w


def test_onnx_matches_dmcp_eval(exported):
    path = exported["files"]["onnx"]
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    assert [i.name for i in m.graph.input] == ["input"]
    assert [o.name for o in m.graph.output] == ["logits"]
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"
    assert not any(n.op_type == "BatchNormalization" for n in m.graph.node), "BN is folded"
    meta = {p.key: p.value for p in m.metadata_props}
    assert json.loads(meta["fix_subnet"]) == json.load(open(exported["subnet"]))
    assert {p.domain or "": p.version for p in m.opset_import}[""] == 17
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    ref = exported["logits"]
    for n in (1, 3):                                    # dynamic batch
        got = sess.run(["logits"], {"input": exported["x"][:n]})[0]
        err = np.abs(got - ref[:n]).max() / np.abs(ref[:n]).max()
        assert err <= 1e-4, err
    # with BN kept as BatchNormalization nodes (what an eval-mode PyTorch net runs)
    from dmcp.export import to_onnx
    unfolded = to_onnx(exported["slim"], (3, SIZE, SIZE), fold_bn=False)
    assert sum(n.op_type == "BatchNormalization" for n in unfolded.graph.node) > 0
    sess = ort.InferenceSession(unfolded.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"input": exported["x"]})[0]
    assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-4
    # the file holds only the pruned channels
    n_params = sum(int(np.prod(t.dims)) for t in m.graph.initializer if len(t.dims) > 1)
    weights = sum(v.size for k, v in exported["slim"].state_dict().items()
                  if k.endswith("weight") and v.ndim > 1)
    assert n_params == weights


def test_pth_loads_into_an_independent_torch_model(exported):
    sd = torch.load(exported["files"]["pth"], weights_only=True)     # no dmcp involved
    assert sd["head.fc.weight"].dtype == torch.float32
    ref = RefClassifier(exported["arch"], 10, 3, widths=exported["widths"])
    ref.load_state_dict(sd)                          # strict: every key, slim shapes
    ref.eval()
    with torch.no_grad():
        got = ref(torch.from_numpy(exported["x"]).double()).numpy()
    ref_logits = exported["logits"]
    assert np.abs(got - ref_logits).max() / np.abs(ref_logits).max() <= 1e-4
    # the structure is written beside it, and dmcp reads the file back
    beside = os.path.splitext(exported["files"]["pth"])[0] + ".json"
    assert json.load(open(beside)) == json.load(open(exported["subnet"]))
    back = read_pth(exported["files"]["pth"])
    own = exported["slim"].state_dict()
    assert list(back) == list(own)
    for k in own:
        assert np.array_equal(back[k], own[k]), k


def test_npz_is_a_slim_dmcp_checkpoint(exported):
    state = read_checkpoint(exported["files"]["npz"])
    own = exported["slim"].state_dict()
    assert state.keys() == own.keys()
    for k in own:
        assert state[k].shape == own[k].shape and np.array_equal(state[k], own[k]), k
    # exporting the slim checkpoint again (its structure, no --subnet slicing) is lossless
    again = str(exported["tmp"] / "again.onnx")
    cfg = exported["config"]
    assert export_main([cfg, exported["files"]["npz"], "--subnet", exported["subnet"],
                        "--out", again]) == 0
    sess = ort.InferenceSession(again, providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"input": exported["x"]})[0]
    assert np.abs(got - exported["logits"]).max() / np.abs(exported["logits"]).max() <= 1e-4


# ---------------------------------------------------------------- rounding

@pytest.mark.parametrize("value,divisor,expected", [(13, 8, 16), (12, 8, 16), (11, 8, 8),
                                                    (100, 8, 104), (3, 8, 8), (37, 1, 37),
                                                    (7, 4, 8), (5, 4, 4)])
def test_make_divisible_matches_mmrazor(value, divisor, expected):
    assert make_divisible(value, divisor, divisor, 0.5) == expected


def test_rounding_is_clamped_and_idempotent():
    r = Rounding(8)
    assert r(100, 100) == 100                         # never above the unit's channels
    assert r(13, 64) == 16 and r(16, 64) == 16
    assert Rounding(1)(13, 64) == 13
    for w in range(1, 65):
        assert r(r(w, 64), 64) == r(w, 64)
    with pytest.raises(UserError, match="divisor"):
        Rounding(0)


def test_sampled_subnets_have_rounded_widths(tmp_path):
    cfg = load_config(write_config(tmp_path, "mbv2", divisor=8))
    model = dmcp.build_model(cfg["model"])
    model.input_shape = (3, SIZE, SIZE)
    for u in model.mutator.units:          # a searched-looking alpha: most units pruned
        u.alpha.data[...] = 0.05
    rng = np.random.default_rng(1)
    draws = []
    for _ in range(50):
        model.mutator.set_widths("direct", rng)
        draws.append(model.mutator.current_flops(model.input_shape) / 1e6)
    model.target_mflops = float(np.median(draws))
    samples = dmcp.algorithm.sample_subnets(model, 2, np.random.default_rng(0), max_draws=200)
    assert not samples["missed"]
    full = {u.key: u.num_channels for u in model.mutator.units}
    for name, (fix, flops) in samples["subnets"].items():
        units = fix["channel_unit_cfg"]["units"]
        for key, entry in units.items():
            c = entry["choice"]
            assert c % 8 == 0 or c == full[key], (name, key, c)
            assert entry["init_args"]["divisor"] == 8
    assert any(fix["channel_unit_cfg"]["units"][k]["choice"] < full[k]
               for k in full for fix, _ in [samples["subnets"]["subnet_1"]])


def test_divisor_reports_flops_before_and_after(tmp_path, capsys):
    config = write_config(tmp_path, "resnet18")
    model, ckpt = supernet_checkpoint(tmp_path, config, seed=1)
    subnet, widths = random_subnet(tmp_path, model, seed=2)
    out = str(tmp_path / "r8.onnx")
    assert export_main([config, ckpt, "--subnet", subnet, "--out", out, "--divisor", "8"]) == 0
    text = capsys.readouterr().out
    cfg = load_config(config)
    arch, _, rounding = supernet_of(cfg)
    st = Structure(arch, subnet, (3, SIZE, SIZE), rounding, 8)
    assert f"{st.mflops_given:.2f} -> {st.mflops:.2f} MFLOPs" in text
    assert st.rerounded, "a random ResNet-18 structure has widths that are not multiples of 8"
    meta = {p.key: p.value for p in onnx.load(out).metadata_props}
    units = json.loads(meta["fix_subnet"])["channel_unit_cfg"]["units"]
    assert all(e["choice"] % 8 == 0 for e in units.values())
    # get_flops.py --subnet ... --divisor reports the same rounded FLOPs
    from dmcp.cli import get_flops_main
    get_flops_main([config, "--subnet", subnet, "--divisor", "8", "--json"])
    r = json.loads(capsys.readouterr().out)
    assert abs(r["flops"] / 1e6 - st.mflops) < 1e-6 and abs(r["mflops_before_divisor"] -
                                                             st.mflops_given) < 1e-6


def test_loading_a_json_rounds_by_its_init_args(tmp_path):
    config = write_config(tmp_path, "resnet18")
    cfg = load_config(config)
    model = dmcp.build_model(cfg["model"])
    fix = model.mutator.export_subnet((1, 3, SIZE, SIZE))
    key = next(iter(fix["channel_unit_cfg"]["units"]))
    entry = fix["channel_unit_cfg"]["units"][key]
    entry["choice"], entry["init_args"]["divisor"] = 13, 8
    st = Structure(cfg["model"]["architecture"], fix, (3, SIZE, SIZE))
    assert st.widths[key.split("_(0, ")[0]] == 16       # mmrazor rounds a choice when set


# ---------------------------------------------------------------- bad input

@pytest.fixture(scope="module")
def small(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    config = write_config(tmp, "resnet18")
    model, ckpt = supernet_checkpoint(tmp, config, seed=0)
    subnet, widths = random_subnet(tmp, model, seed=1)
    slim = str(tmp / "slim.npz")
    assert export_main([config, ckpt, "--subnet", subnet, "--out", slim]) == 0
    other = write_config(tmp, "resnet50")
    return dict(tmp=tmp, config=config, ckpt=ckpt, subnet=subnet, slim=slim, other=other)


def _refused(small, args, needle, out="x.onnx"):
    target = small["tmp"] / "out" / out
    target.parent.mkdir(exist_ok=True)
    before = set(os.listdir(target.parent))
    with pytest.raises(UserError, match=needle):
        export_main(list(args) + ["--out", str(target)])
    assert set(os.listdir(target.parent)) == before, "nothing is written"


def test_bad_inputs_are_one_line_and_write_nothing(small, tmp_path):
    c, k, s = small["config"], small["ckpt"], small["subnet"]
    _refused(small, [c, k, "--subnet", s, "--divisor", "0"], "divisor")
    _refused(small, [c, k, "--subnet", s], "suffix", out="x.txt")
    _refused(small, [c, k, "--subnet", s, "--format", "tflite"], "tflite")
    _refused(small, [c, k, "--subnet", s, "--opset", "7"], "opset")
    with pytest.raises(UserError, match="does not exist"):
        export_main([c, k, "--subnet", s, "--out", str(tmp_path / "no" / "such" / "x.onnx")])
    # a checkpoint of another architecture
    _refused(small, [small["other"], k], "fits neither")
    # a slim checkpoint with a structure it was not trained with
    model = dmcp.build_model(load_config(c)["model"])
    other, _ = random_subnet(tmp_path, model, seed=99)
    _refused(small, [c, small["slim"], "--subnet", other], "fits neither")
    # --divisor changing a retrained subnet's widths
    _refused(small, [c, small["slim"], "--subnet", s, "--divisor", "8"], "retrained subnet")
    # a JSON that does not fit the model
    bad = tmp_path / "wide.json"
    bad.write_text(json.dumps({"channel_unit_cfg": {"units": {
        "backbone.conv1_(0, 64)_64": {"init_args": {"num_channels": 32}, "choice": 16}}}}))
    _refused(small, [c, k, "--subnet", str(bad)], "num_channels")
    _refused(small, [c, str(tmp_path / "missing.npz"), "--subnet", s], "missing.npz")


def test_missing_onnx_package_says_how_to_get_it(small, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)          # import onnx raises ImportError
    _refused(small, [small["config"], small["ckpt"], "--subnet", small["subnet"]],
             r"pip install 'dmcp\[export\]'")
