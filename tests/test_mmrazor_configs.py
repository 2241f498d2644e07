"""mmrazor's own DMCP subnet configs drop in unchanged.  They are written as
mmrazor's configs/pruning/mmcls/dmcp/dmcp_{resnet50,mbv2}_subnet_32xb64.py are:
``model = dict(type='sub_model', ...)`` without ``_delete_=True`` over the
supernet config, so the base's DMCP keys are merged into the sub_model dict and
must be ignored; base values changed through ``_base_.x = ...``; the published
structure's path relative to the repository root.  Also mmrazor's launch
command, ``GPUS=32 sh tools/slurm_train.sh ...``."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import dmcp
from dmcp.algorithm import DMCP, SUB_MODEL_KEYS
from dmcp.cli import load_config
from dmcp.config import signature_keys
from dmcp.units import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# mmrazor's published structures (open-mmlab/mmrazor, configs/pruning/mmcls/dmcp/), as test data
R50_2G = "configs/mmrazor/DMCP_R50_2G.json"
MBV2_100M = "configs/mmrazor/DMCP_MBV2_100M.json"

# the layout of mmrazor's dmcp_*_subnet_32xb64.py, over one of dmcp's supernet configs
SUBNET = """_base_ = ['{base}']

paramwise_cfg = dict(norm_decay_mult=0.0, bias_decay_mult=0.0)
_base_.optim_wrapper = dict(
    optimizer=dict(type='SGD', lr=0.8, momentum=0.9, weight_decay=0.0001, nesterov=True),
    paramwise_cfg=paramwise_cfg)

max_epochs = 100
_base_.param_scheduler = [
    dict(type='LinearLR', start_factor=0.25, by_epoch=True, begin=0, end=2,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', T_max=max_epochs, eta_min=1e-5, by_epoch=True, begin=2,
         end=max_epochs, convert_to_iter_based=True),
]
_base_.train_cfg = dict(by_epoch=True, max_epochs=max_epochs, val_interval=1)

custom_hooks = None

model = dict(
    _scope_='mmrazor',
    type='sub_model',
    cfg=_base_.supernet,
    fix_subnet='{fix_subnet}',
    mode='mutator')

default_hooks = _base_.default_hooks
default_hooks['checkpoint'] = dict(type='CheckpointHook', interval=5)

_base_.model_wrapper_cfg = None

randomness = dict(seed=2016, diff_rank_seed=True)
"""


def subnet_config(tmp_path, base, fix_subnet, name="subnet.py"):
    path = tmp_path / name
    path.write_text(SUBNET.format(base=os.path.join(ROOT, "configs", base), fix_subnet=fix_subnet))
    return str(path)


def tool(*args):
    return subprocess.run([sys.executable] + list(args), cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)     # mmrazor's fix_subnet paths are relative to the repository root


def test_subnet_config_inherits_the_dmcp_keys(tmp_path, at_root):
    cfg = load_config(subnet_config(tmp_path, "dmcp_resnet50_supernet.py", R50_2G), [])
    inherited = set(signature_keys(DMCP.__init__, ("seed",))) - set(SUB_MODEL_KEYS)
    assert {"architecture", "target_flops", "mutator_cfg"} <= set(cfg.model) - set(SUB_MODEL_KEYS)
    assert set(cfg.model) - set(SUB_MODEL_KEYS) <= inherited | {"type"}
    assert cfg.model_wrapper_cfg is None and cfg.custom_hooks is None


def test_resnet50_2g_builds_at_its_flops(tmp_path, at_root):
    cfg = load_config(subnet_config(tmp_path, "dmcp_resnet50_supernet.py", R50_2G), [])
    net = dmcp.build_model(cfg.model)
    widths = {u.name: u.num_channels for u in net.units.values()}
    assert widths["backbone.conv1"] == 52 and widths["backbone.layer4.1.conv2"] == 461
    # conv+linear multiply-accumulates at 3x224x224, BN/ReLU/pooling not counted
    assert dmcp.count_flops(net, (3, 224, 224))["flops"] == 2_194_130_032


def test_get_flops_of_resnet50_2g(tmp_path):
    r = tool("tools/get_flops.py", subnet_config(tmp_path, "dmcp_resnet50_supernet.py", R50_2G),
             "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["input_shape"] == [3, 224, 224]
    assert round(out["flops"] / 1e9, 3) == 2.194


def min_structure(tmp_path, base, shape):
    """The fix-subnet JSON of a shipped supernet config's DMCP model at its smallest widths."""
    model = dmcp.build_model(load_config(os.path.join(ROOT, "configs", base), []).model)
    model.mutator.set_widths("min")
    path = tmp_path / "min.json"
    path.write_text(json.dumps(model.mutator.export_subnet((1,) + shape)))
    return str(path)


@pytest.mark.parametrize("base", ["dmcp_resnet50_supernet.py", "dmcp_mbv2_supernet.py"])
def test_train_gets_to_the_data(tmp_path, base):
    """The model is built, then the missing ImageNet ends the run, as for the supernet
    configs."""
    fix = R50_2G if "resnet50" in base else min_structure(tmp_path, base, (3, 224, 224))
    r = tool("tools/train.py", subnet_config(tmp_path, base, fix), "--work-dir",
             str(tmp_path / "wd"))
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "data_root 'data/imagenet' is not a directory" in r.stderr, r.stderr[-3000:]


def test_subnet_config_trains(tmp_path):
    """The same layout over the Fashion-MNIST supernet config trains to its end."""
    base = "dmcp_resnet20_fmnist_supernet.py"
    if not os.path.exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"):
        raise AssertionError("Fashion-MNIST is missing: apt-get install dataset-fashion-mnist")
    wd = str(tmp_path / "wd")
    fix = min_structure(tmp_path, base, (1, 28, 28))
    r = tool("tools/train.py", subnet_config(tmp_path, base, fix), "--work-dir", wd,
             "--cfg-options", "train_dataloader.dataset.indices=64",
             "train_dataloader.batch_size=32", "val_dataloader.dataset.indices=64",
             "train_cfg.max_epochs=1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.path.exists(os.path.join(wd, "epoch_1.npz"))


def test_mbv2_structure_of_a_wider_supernet_is_refused(tmp_path, at_root):
    """mmrazor's DMCP_MBV2_100M.json asks 693 channels of a 576-channel unit: it was
    not searched on this 1.0x supernet."""
    path = subnet_config(tmp_path, "dmcp_mbv2_supernet.py", MBV2_100M)
    want = (f"{MBV2_100M}: unit 'backbone.layer6.0.conv.0.conv_(0, 576)_576' choice 693 is "
            f"outside 1..576")
    with pytest.raises(UserError) as e:
        dmcp.build_model(load_config(path, []).model)
    assert str(e.value).startswith(want) and "widen_factor=1.5" in str(e.value)
    for t in ("tools/get_flops.py", "tools/train.py"):
        r = tool(t, path, "--work-dir", str(tmp_path / "wd")) if "train" in t else tool(t, path)
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
        assert want in r.stderr, r.stderr[-3000:]


@pytest.mark.parametrize("key, hint", [("fix_subnett", "fix_subnet"),
                                       ("init_weight_from_supernt", "init_weight_from_supernet"),
                                       ("extra_prefx", "extra_prefix")])
def test_misspelt_sub_model_key_still_fails(key, hint):
    cfg = dict(type="mmrazor.sub_model", cfg=dict(type="ImageClassifier"), fix_subnet={},
               architecture={}, target_flops=2000)
    cfg[key] = 1
    with pytest.raises(UserError, match=f"sub_model: unknown key '{key}' \\(did you mean "
                                        f"'{hint}'\\?\\); accepted keys: _scope_, cfg, "):
        dmcp.build_model(cfg)


def test_unknown_key_outside_dmcp_fails():
    with pytest.raises(UserError, match="sub_model: unknown key 'teacher'"):
        dmcp.build_model(dict(type="sub_model", cfg={}, fix_subnet={}, teacher=dict()))


def fake_srun(tmp_path):
    """An srun that prints its arguments, one a line."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    srun.chmod(0o755)
    return str(bin_dir)


@pytest.mark.parametrize("env, ntasks, per_node, said", [
    (dict(GPUS="32", GPUS_PER_NODE="8"), "32", "8",
     "slurm_train.sh: GPUS=32 read as TASKS=32, GPUS_PER_NODE=8 as TASKS_PER_NODE=8 (CPU ranks)"),
    (dict(GPUS="4"), "4", None, "slurm_train.sh: GPUS=4 read as TASKS=4 (CPU ranks)"),
    (dict(GPUS="4", GPUS_PER_NODE="8", TASKS_PER_NODE="2"), "4", "2",
     "slurm_train.sh: GPUS=4 read as TASKS=4 (CPU ranks)"),
    (dict(TASKS="2", GPUS="32"), "2", None,
     "slurm_train.sh: GPUS/GPUS_PER_NODE ignored (TASKS=2 is set)"),
    (dict(TASKS="3"), "3", None, None),
])
def test_slurm_train_sh_reads_mmrazors_gpus(tmp_path, env, ntasks, per_node, said):
    e = {k: v for k, v in os.environ.items()
         if k not in ("GPUS", "GPUS_PER_NODE", "TASKS", "TASKS_PER_NODE")}
    e.update(env, PATH=fake_srun(tmp_path) + os.pathsep + e["PATH"])
    r = subprocess.run(["sh", "tools/slurm_train.sh", "part", "job", "cfg.py", "--work-dir", "w"],
                       cwd=ROOT, capture_output=True, text=True, env=e, timeout=60)
    assert r.returncode == 0, r.stderr
    args = r.stdout.splitlines()
    assert f"--ntasks={ntasks}" in args
    assert [a for a in args if a.startswith("--ntasks-per-node")] == (
        [f"--ntasks-per-node={per_node}"] if per_node else [])
    assert args[-5:] == ["cfg.py", "--launcher", "slurm", "--work-dir", "w"]
    assert r.stderr.strip() == (said or "")


def test_slurm_train_sh_refuses_a_bad_gpus(tmp_path):
    e = dict(os.environ, GPUS="8x", PATH=fake_srun(tmp_path) + os.pathsep + os.environ["PATH"])
    e.pop("TASKS", None)
    r = subprocess.run(["sh", "tools/slurm_train.sh", "part", "job", "cfg.py"], cwd=ROOT,
                       capture_output=True, text=True, env=e, timeout=60)
    assert r.returncode == 2 and r.stdout == ""
    assert "slurm_train.sh: GPUS must be a positive integer, got '8x'" in r.stderr


def test_published_mbv2_structure_retrains_on_the_1p5x_supernet(at_root):
    """The authors searched MobileNetV2 on 1.5x: configs/dmcp_mbv2_1.5x_subnet.py builds
    mmrazor's 100M structure (rebased to the 1.5x unit keys, choices unchanged) at
    every width the file asks for, and the shipped file is what rebase_subnet makes."""
    from dmcp.units import Mutator, rebase_subnet
    cfg = load_config("configs/dmcp_mbv2_1.5x_subnet.py", [])
    net = dmcp.build_model(cfg.model)
    want = {k.split("_(0, ")[0]: v["choice"] for k, v in
            json.load(open(MBV2_100M))["channel_unit_cfg"]["units"].items()}
    assert {u.name: u.num_channels for u in net.units.values()} == want
    assert dmcp.count_flops(net, (3, 224, 224))["flops"] == 85_424_809
    supernet = dmcp.build_model(load_config("configs/dmcp_mbv2_1.5x_supernet.py", []).model)
    assert round(supernet.expected_mflops()) == 673
    rebased = rebase_subnet(MBV2_100M, Mutator(dmcp.build_model(cfg.model.cfg)))
    assert rebased == json.load(open("configs/mmrazor/DMCP_MBV2_100M_1.5x.json"))
    # a structure of another network is refused by name
    with pytest.raises(UserError, match="does not exist in this model"):
        rebase_subnet(R50_2G, Mutator(dmcp.build_model(cfg.model.cfg)))


def test_resnet18_configs_search_space_and_subnet(tmp_path, at_root):
    cfg = load_config("configs/dmcp_resnet18_supernet.py", [])
    assert cfg.model.target_flops == 1040
    model = dmcp.build_model(cfg.model)
    assert round(model.expected_mflops()) == 1814
    model.mutator.set_widths("min")
    fix = tmp_path / "min.json"
    fix.write_text(json.dumps(model.mutator.export_subnet((1, 3, 224, 224))))
    sub = load_config("configs/dmcp_resnet18_subnet.py", [f"model.fix_subnet={fix}"])
    net = dmcp.build_model(sub.model)
    assert net.units["backbone.conv1"].num_channels == model.mutator.units[0].width
    assert dmcp.count_flops(net, (3, 224, 224))["flops"] < 0.2 * 1814e6


@pytest.mark.parametrize("config", ["dmcp_resnet50_supernet.py", "dmcp_mbv2_supernet.py",
                                    "dmcp_resnet18_supernet.py", "dmcp_mbv2_1.5x_supernet.py",
                                    "dmcp_resnet50_subnet.py", "dmcp_mbv2_1.5x_subnet.py"])
def test_imagenet_configs_use_syncbn(config):
    from dmcp.nn import SyncBatchNorm2d
    cfg = load_config(os.path.join(ROOT, "configs", config), [])
    arch = cfg.model.get("architecture") or cfg.model.get("cfg")
    assert arch["backbone"]["norm_cfg"] == dict(type="SyncBN")
    if "fix_subnet" not in cfg.model or os.path.exists(os.path.join(ROOT, cfg.model.fix_subnet)):
        net = dmcp.build_model(dict(arch))
        assert all(type(m) is SyncBatchNorm2d for _, m in net.named_modules()
                   if "BatchNorm" in type(m).__name__)


# newer mmrazor subnet configs keep the DMCP model dict and set its fix_subnet
DMCP_LAYOUTS = {
    "dict": """_base_ = ['{base}']
model = dict(_scope_='mmrazor', type='DMCP', architecture=_base_.supernet, fix_subnet='{fix}')
""",
    "item": """_base_ = ['{base}']
model = _base_.model
model['fix_subnet'] = '{fix}'
""",
    "update": """_base_ = ['{base}']
_base_.model.update(fix_subnet='{fix}')
""",
}


def dmcp_subnet_config(tmp_path, base, fix_subnet, layout):
    path = tmp_path / f"dmcp_{layout}.py"
    path.write_text(DMCP_LAYOUTS[layout].format(base=os.path.join(ROOT, "configs", base),
                                                fix=fix_subnet))
    return str(path)


@pytest.mark.parametrize("layout", sorted(DMCP_LAYOUTS))
def test_dmcp_dict_with_fix_subnet_is_the_subnet(tmp_path, at_root, layout, capsys):
    from dmcp.algorithm import pruned_subnet, supernet_of
    from dmcp.cli import get_flops_main
    cfg = load_config(dmcp_subnet_config(tmp_path, "dmcp_resnet50_supernet.py", R50_2G, layout), [])
    assert cfg.model.type == "DMCP" and "target_flops" in cfg.model    # still the DMCP dict
    assert pruned_subnet(cfg.model)[1] == R50_2G and supernet_of(cfg)[1] == R50_2G
    net = dmcp.build_model(cfg.model)
    assert not isinstance(net, DMCP)
    assert {u.name: u.num_channels for u in net.units.values()}["backbone.conv1"] == 52
    assert dmcp.count_flops(net, (3, 224, 224))["flops"] == 2_194_130_032
    capsys.readouterr()
    assert get_flops_main([cfg.filename, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["flops"] == 2_194_130_032     # not 4.09 G


def test_dmcp_dict_with_fix_subnet_still_checks_its_keys(tmp_path, at_root):
    cfg = load_config(dmcp_subnet_config(tmp_path, "dmcp_resnet50_supernet.py", R50_2G, "update"),
                      ["model.target_flop=2000"])
    with pytest.raises(UserError, match=r"^model \(DMCP\): unknown key 'target_flop' \(did you "
                                        r"mean 'target_flops'\?\); accepted keys: .*fix_subnet"):
        dmcp.build_model(cfg.model)
    # fix_subnet=None is the supernet, as before
    supernet = {k: v for k, v in cfg.model.items() if k != "target_flop"}
    assert isinstance(dmcp.build_model(dict(supernet, fix_subnet=None)), DMCP)


def test_dmcp_dict_with_fix_subnet_trains_tests_and_exports(tmp_path):
    """train.py, test.py, get_flops.py and export.py all see the pruned subnet."""
    base = "dmcp_resnet20_fmnist_supernet.py"
    if not os.path.exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"):
        raise AssertionError("Fashion-MNIST is missing: apt-get install dataset-fashion-mnist")
    fix = min_structure(tmp_path, base, (1, 28, 28))
    widths = {k.split("_(0, ")[0]: v["choice"]
              for k, v in json.load(open(fix))["channel_unit_cfg"]["units"].items()}
    config = dmcp_subnet_config(tmp_path, base, fix, "update")
    small = ["train_dataloader.dataset.indices=64", "train_dataloader.batch_size=32",
             "val_dataloader.dataset.indices=64", "train_cfg.max_epochs=1"]
    wd = str(tmp_path / "wd")
    r = tool("tools/train.py", config, "--work-dir", wd, "--cfg-options", *small)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Supernet FLOPs" not in r.stdout                 # no search ran
    assert "optim_wrapper.mutator is not used" in r.stdout  # and it says what it ignores
    with np.load(os.path.join(wd, "epoch_1.npz")) as z:
        assert z["state_dict/backbone.conv1.weight"].shape[0] == widths["backbone.conv1"]
        assert not any(k.startswith(("state_dict/mutator.", "arch_optimizer/")) for k in z.files)
    ckpt = os.path.join(wd, "epoch_1.npz")
    r = tool("tools/test.py", config, ckpt, "--work-dir", str(tmp_path / "test"),
             "--cfg-options", *small)
    assert r.returncode == 0 and "Test: accuracy/top1" in r.stdout, r.stderr[-3000:]
    r = tool("tools/get_flops.py", config, "--json")
    assert r.returncode == 0, r.stderr[-3000:]
    flops = json.loads(r.stdout)["flops"]
    full = json.loads(tool("tools/get_flops.py", os.path.join(ROOT, "configs", base),
                           "--json").stdout)["flops"]
    assert flops < full / 2
    out = str(tmp_path / "slim.npz")
    r = tool("tools/export.py", config, ckpt, "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f": {flops / 1e6:.2f} MFLOPs" in r.stdout, r.stdout
    r = tool("tools/sample_subnets.py", config, ckpt)
    assert r.returncode == 1 and "model.fix_subnet makes it a pruned subnet" in r.stderr, r.stderr
