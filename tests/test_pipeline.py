"""The pipeline end to end on a few hundred Fashion-MNIST images: supernet search
with every work-dir artefact, retraining of the sampled subnet, evaluation,
bit-for-bit resume, and clear user errors from the tools."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import dmcp
from dmcp.cli import load_config
from dmcp.runner import Runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUPERNET = os.path.join(ROOT, "configs", "dmcp_resnet20_fmnist_supernet.py")
SUBNET = os.path.join(ROOT, "configs", "dmcp_resnet20_fmnist_subnet.py")
FMNIST = "/usr/share/datasets/fashion-mnist"

# a DMCP run small enough for CI: 192 images, batches of 32, 2 epochs, arch steps from iteration 2
SHORT = ["train_dataloader.dataset.indices=192", "train_dataloader.batch_size=32",
         "val_dataloader.dataset.indices=128", "val_dataloader.batch_size=64",
         "train_cfg.max_epochs=2", "train_cfg.val_interval=1", "model.arch_start_train=2",
         "model.arch_train_freq=1", "model.target_flops=6", "custom_hooks.0.subnet_sample_num=2",
         "default_hooks.logger.interval=2", "model.distillation_times=3"]


def tool(*args, check=True):
    r = subprocess.run([sys.executable] + list(args), cwd=ROOT, capture_output=True, text=True,
                       timeout=900)
    if check and r.returncode != 0:
        raise AssertionError(f"{args} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    if not os.path.exists(os.path.join(FMNIST, "train-images-idx3-ubyte.gz")):
        raise AssertionError(f"Fashion-MNIST is missing from {FMNIST}: "
                             "apt-get install dataset-fashion-mnist")
    wd = str(tmp_path_factory.mktemp("supernet"))
    r = tool("tools/train.py", SUPERNET, "--work-dir", wd, "--cfg-options", *SHORT)
    return wd, r


def test_supernet_work_dir(searched):
    wd, r = searched
    files = set(os.listdir(wd))
    assert "dmcp_resnet20_fmnist_supernet.py" in files           # resolved config
    logs = [f for f in files if f.endswith(".log")]
    assert len(logs) == 1
    log = open(os.path.join(wd, logs[0])).read()
    for needle in ("Epoch(train) [1]", "lr:", "eta:", "time:", "data_time:", "loss_max:",
                   "loss_min:", "expected_mflops:", "arch_loss:", "Epoch(val) [2]",
                   "max/accuracy/top1", "min/accuracy/top1", "Sampled subnet_1", "Sampled expected_ch"):
        assert needle in log, needle
    records = [json.loads(line) for line in open(os.path.join(wd, "vis_data", "scalars.json"))]
    assert any("expected_mflops" in rec for rec in records)
    assert any("max/accuracy/top1" in rec for rec in records)
    assert {"epoch_1.npz", "epoch_2.npz", "last_checkpoint"} <= files
    assert open(os.path.join(wd, "last_checkpoint")).read().strip().endswith("epoch_2.npz")
    # the resolved config reloads
    assert load_config(os.path.join(wd, "dmcp_resnet20_fmnist_supernet.py")).model.target_flops == 6

    sample = os.path.join(wd, "model_sample")
    names = set(os.listdir(sample))
    assert {"subnet_1.json", "subnet_2.json", "expected_ch.json", "unit_widths.png",
            "flops_histogram.png"} <= names
    for png in ("unit_widths.png", "flops_histogram.png"):
        with open(os.path.join(sample, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    for name in ("subnet_1.json", "subnet_2.json"):
        flops = json.loads(tool("tools/get_flops.py", SUPERNET, "--subnet", os.path.join(sample, name),
                                "--json").stdout)["flops"]
        assert 0.95 * 6e6 <= flops <= 1.05 * 6e6, (name, flops)
    fix = json.load(open(os.path.join(sample, "expected_ch.json")))
    assert fix["type"] == "DMCPChannelMutator"
    units = fix["channel_unit_cfg"]["units"]
    assert "backbone.conv1_(0, 16)_16" in units
    for key, entry in units.items():
        assert 1 <= entry["choice"] <= entry["init_args"]["num_channels"]


def test_sample_subnets_tool_from_a_checkpoint(searched, tmp_path):
    """tools/sample_subnets.py samples again from the supernet checkpoint, for the
    config's target or another; charts and expected_ch.json come along."""
    wd, _ = searched
    out = str(tmp_path / "again")
    r = tool("tools/sample_subnets.py", SUPERNET, os.path.join(wd, "epoch_2.npz"), "--num", "3",
             "--target", "6", "--work-dir", out, "--cfg-options", "model.target_flops=6")
    names = set(os.listdir(os.path.join(out, "model_sample")))
    assert {"subnet_1.json", "subnet_2.json", "subnet_3.json", "expected_ch.json",
            "unit_widths.png", "flops_histogram.png"} <= names, names
    assert "Sampled subnet_3" in r.stdout
    # same checkpoint, same seed: the same structures as a second run
    again = str(tmp_path / "again2")
    tool("tools/sample_subnets.py", SUPERNET, os.path.join(wd, "epoch_2.npz"), "--num", "3",
         "--target", "6", "--work-dir", again, "--cfg-options", "model.target_flops=6")
    for n in ("subnet_1.json", "expected_ch.json"):
        assert (json.load(open(os.path.join(out, "model_sample", n)))
                == json.load(open(os.path.join(again, "model_sample", n))))
    _user_error(["tools/sample_subnets.py", SUPERNET, os.path.join(wd, "epoch_2.npz"), "--num", "0"],
                "--num 0")
    _user_error(["tools/sample_subnets.py", SUBNET, os.path.join(wd, "epoch_2.npz")],
                "needs a DMCP supernet config")


def test_a_search_that_misses_the_window_keeps_its_results(tmp_path):
    """An unreachable target (below the smallest subnet): a WARNING with the closest
    FLOPs, every file written, exit status 0."""
    wd = str(tmp_path / "miss")
    opts = [o for o in SHORT if not o.startswith("model.target_flops")] + [
        "model.target_flops=0.05", "train_cfg.max_epochs=1", "custom_hooks.0.max_draws=50"]
    r = tool("tools/train.py", SUPERNET, "--work-dir", wd, "--cfg-options", *opts)
    assert "WARNING - DMCPSubnetHook: no direct sample within 5% of 0.05 MFLOPs" in r.stdout
    assert "tools/sample_subnets.py" in r.stdout
    assert "WARNING - DMCPSubnetHook: expected_ch has" in r.stdout
    assert "Raise model.flop_loss_weight" in r.stdout
    names = set(os.listdir(os.path.join(wd, "model_sample")))
    assert {"subnet_1.json", "subnet_2.json", "expected_ch.json", "unit_widths.png",
            "flops_histogram.png"} <= names, names


@pytest.mark.parametrize("option,words", [
    ("model.target_flops=abc", "model.target_flops='abc': expected a number"),
    ("model.target_flops=-1", "model.target_flops=-1: must be a positive"),
    ("model.target_flops=100", "above the supernet's 31.02 MFLOPs"),
    ("train_cfg.max_epochs=abc", "train_cfg.max_epochs='abc': expected an integer"),
    ("custom_hooks.0.subnet_sample_num=x", "subnet_sample_num='x': expected an integer"),
    ("model.mutator_cfg.pruning_cfg=(0.1,1.0)", "expected (min_rate, max_rate, offset)"),
    ("optim_wrapper.architecture.optimizer.lr=fast", "optimizer.lr='fast': expected a number"),
])
def test_bad_values_are_one_line(option, words):
    _user_error(["tools/train.py", SUPERNET, "--cfg-options", option], words)


def test_flops_are_counted_at_one_size():
    """demo_input when given, else the val pipeline's size, --shape over both; the
    runner's budget loss and get_flops.py use the same function; a demo_input that
    disagrees with the pipeline, and bad --shape values, are user errors."""
    from dmcp.flops import flops_input_shape
    cfg = load_config(SUPERNET)
    assert flops_input_shape(cfg) == (1, 28, 28)
    del cfg["model"]["mutator_cfg"]["parse_cfg"]["demo_input"]
    assert flops_input_shape(cfg) == (1, 28, 28)            # from the pipeline
    assert flops_input_shape(cfg, [32]) == (1, 32, 32)
    assert flops_input_shape(cfg, [32, 40]) == (1, 32, 40)
    cfg["model"]["mutator_cfg"]["parse_cfg"]["demo_input"] = (1, 1, 32, 32)
    with pytest.raises(dmcp.UserError, match="disagrees"):
        flops_input_shape(cfg)
    full = json.loads(tool("tools/get_flops.py", SUPERNET, "--json").stdout)
    assert full["input_shape"] == [1, 28, 28] and abs(full["flops"] / 1e6 - 31.02) < 0.01
    _user_error(["tools/get_flops.py", SUPERNET, "--shape", "224", "224", "224"], "--shape")
    _user_error(["tools/get_flops.py", SUPERNET, "--shape", "0"], "--shape")
    _user_error(["tools/get_flops.py", SUPERNET, "--shape", "-5"], "--shape")
    _user_error(["tools/get_flops.py", SUPERNET, "--cfg-options",
                 "model.mutator_cfg.parse_cfg.demo_input=(1,1,32,32)"], "disagrees")


def test_test_tool_on_a_supernet_checkpoint(searched, tmp_path):
    """tools/test.py on a supernet checkpoint evaluates as validation does (BN
    recalibrated at the width), says which width, takes --width/--subnet, and
    writes --out and the work dir's scalars.json."""
    wd, _ = searched
    ckpt = os.path.join(wd, "epoch_2.npz")
    last = [rec for rec in (json.loads(line) for line in
                            open(os.path.join(wd, "vis_data", "scalars.json")))
            if "max/accuracy/top1" in rec][-1]
    out = str(tmp_path / "metrics.json")
    twd = str(tmp_path / "t")
    opts = SHORT + ["test_dataloader.dataset.indices=128", "test_dataloader.batch_size=64"]
    r = tool("tools/test.py", SUPERNET, ckpt, "--work-dir", twd, "--out", out,
             "--cfg-options", *opts)
    assert "supernet at max width, BN recalibrated" in r.stdout, r.stdout[-2000:]
    got = json.load(open(out))
    assert got["evaluated"].startswith("supernet at max width")
    # the same images and the same recalibration batches as the last validation
    assert abs(got["metrics"]["accuracy/top1"] - last["max/accuracy/top1"]) < 1e-6, (got, last)
    recs = [json.loads(line) for line in open(os.path.join(twd, "vis_data", "scalars.json"))]
    assert recs[-1]["mode"] == "test" and recs[-1]["accuracy/top1"] == got["metrics"]["accuracy/top1"]
    r = tool("tools/test.py", SUPERNET, ckpt, "--work-dir", twd, "--width", "min", "--out", out,
             "--cfg-options", *opts)
    assert abs(json.load(open(out))["metrics"]["accuracy/top1"] - last["min/accuracy/top1"]) < 1e-6
    fix = os.path.join(wd, "model_sample", "expected_ch.json")
    r = tool("tools/test.py", SUPERNET, ckpt, "--work-dir", twd, "--subnet", fix,
             "--cfg-options", *opts)
    assert f"supernet at {fix}" in r.stdout


def test_subnet_retrain_and_test(searched, tmp_path):
    wd, _ = searched
    fix = os.path.join(wd, "model_sample", "expected_ch.json")
    sub = str(tmp_path / "subnet")
    opts = ["train_dataloader.dataset.indices=192", "train_dataloader.batch_size=32",
            "val_dataloader.dataset.indices=128", "train_cfg.max_epochs=1", "train_cfg.val_interval=1",
            f"model.fix_subnet={fix}", "default_hooks.logger.interval=2"]
    tool("tools/train.py", SUBNET, "--work-dir", sub, "--cfg-options", *opts)
    assert os.path.exists(os.path.join(sub, "epoch_1.npz"))
    r = tool("tools/test.py", SUBNET, os.path.join(sub, "epoch_1.npz"), "--work-dir", str(tmp_path / "t"),
             "--cfg-options", *opts)
    assert "accuracy/top1" in r.stdout + r.stderr
    # exported to a slim .npz, the subnet config and test.py give the same accuracy, with
    # the structure taken from the file itself
    slim = str(tmp_path / "slim.npz")
    tool("tools/export.py", SUBNET, os.path.join(sub, "epoch_1.npz"), "--out", slim,
         "--cfg-options", f"model.fix_subnet={fix}")
    r2 = tool("tools/test.py", SUBNET, slim, "--work-dir", str(tmp_path / "t2"), "--cfg-options",
              *[o for o in opts if not o.startswith("model.fix_subnet")])
    acc = [re.search(r"accuracy/top1: ([0-9.]+)", x.stdout + x.stderr).group(1) for x in (r, r2)]
    assert acc[0] == acc[1], acc
    # the pruned net has the FLOPs of the JSON
    pruned = json.loads(tool("tools/get_flops.py", SUBNET, "--json", "--cfg-options",
                             f"model.fix_subnet={fix}").stdout)["flops"]
    applied = json.loads(tool("tools/get_flops.py", SUPERNET, "--subnet", fix, "--json").stdout)["flops"]
    assert pruned == applied


def test_pipeline_tool_ends_with_a_table_and_an_onnx_model(tmp_path):
    wd = str(tmp_path / "pipe")
    sub = ["train_dataloader.dataset.indices=192", "train_cfg.max_epochs=1"]
    r = tool("tools/pipeline.py", "--work-dir", wd, "--cfg-options",
             "train_dataloader.batch_size=32", "val_dataloader.dataset.indices=128",
             "default_hooks.logger.interval=2",
             "--supernet-options", *SHORT[:1], *SHORT[4:], "--subnet-options", *sub)
    table = json.load(open(os.path.join(wd, "result.json")))
    assert table["onnx"] == os.path.join(wd, "pruned.onnx") and os.path.getsize(table["onnx"]) > 0
    assert "pruned model (ONNX)" in r.stdout and "MB)" in r.stdout
    assert 0 < table["pruned_mflops"] < table["supernet_mflops"]
    # the metadata tools/export.py writes too (export.onnx_metadata)
    import onnx
    meta = {p.key: p.value for p in onnx.load(table["onnx"]).metadata_props}
    assert set(meta) == {"fix_subnet", "input_shape", "mflops", "producer", "data_preprocessor"}
    assert json.loads(meta["fix_subnet"]) == json.load(open(table["fix_subnet"]))
    assert float(meta["mflops"]) == round(table["pruned_mflops"], 3)
    assert json.loads(meta["input_shape"]) == [1, 28, 28]


def _short_cfg(extra=()):
    cfg = load_config(SUPERNET, SHORT + ["train_cfg.val_interval=100", "custom_hooks=[]",
                                         "model.target_flops=10"] + list(extra))
    return cfg


def test_resume_bit_for_bit(tmp_path):
    straight = Runner(_short_cfg(), work_dir=str(tmp_path / "a"))
    straight.train()
    total = straight.iter
    assert total == 12
    killed = Runner(_short_cfg(), work_dir=str(tmp_path / "b"))
    killed.train(stop_at_iter=total // 2 + 1)          # mid-epoch, after arch steps started
    resumed = Runner(_short_cfg(), work_dir=str(tmp_path / "b"), resume="auto")
    assert resumed.iter == total // 2 + 1
    resumed.train()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    assert any(k.startswith("mutator.") for k in a)
    assert straight.model.random_prob == resumed.model.random_prob


def _user_error(args, needle):
    r = tool(*args, check=False)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    assert needle in r.stderr, r.stderr


def test_tools_report_user_errors(tmp_path):
    _user_error(["tools/train.py", "configs/nope.py"], "nope.py")
    _user_error(["tools/train.py", SUPERNET, "--work-dir", str(tmp_path / "x"), "--cfg-options",
                 "model.arch_strat_train=3"], "arch_strat_train")
    _user_error(["tools/train.py", SUPERNET, "--work-dir", str(tmp_path / "x"), "--cfg-options",
                 "train_dataloader.dataset.data_root=/nonexistent/fmnist"], "/nonexistent/fmnist")
    _user_error(["tools/train.py", SUPERNET, "--work-dir", str(tmp_path / "x"), "--cfg-options",
                 "supernet.backbone.type=ResNot", "model.architecture.backbone.type=ResNot"], "ResNot")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    _user_error(["tools/get_flops.py", SUPERNET, "--subnet", str(bad)], "bad.json")
    wide = tmp_path / "wide.json"
    wide.write_text(json.dumps({"type": "DMCPChannelMutator", "channel_unit_cfg": {"units": {
        "backbone.conv1_(0, 16)_16": {"init_args": {"num_channels": 16}, "choice": 99}}}}))
    _user_error(["tools/get_flops.py", SUPERNET, "--subnet", str(wide)], "99")
    _user_error(["tools/test.py", SUPERNET, str(tmp_path / "missing.npz")], "missing.npz")


def test_get_flops_pins_published_numbers():
    r50 = json.loads(tool("tools/get_flops.py", "configs/dmcp_resnet50_supernet.py", "--json").stdout)
    mb2 = json.loads(tool("tools/get_flops.py", "configs/dmcp_mbv2_supernet.py", "--json").stdout)
    assert r50["flops"] == 4089184256 and r50["params"] == 25557032
    assert mb2["flops"] == 300774272 and mb2["params"] == 3504872
    assert round(r50["flops"] / 1e9, 2) == 4.09 and round(mb2["flops"] / 1e6, 1) == 300.8
    assert len(r50["layers"]) == 54 and len(mb2["layers"]) == 53


def test_python_api_matches_interfaces():
    cfg = dmcp.Config.fromfile(SUPERNET)
    model = dmcp.build_model(cfg.supernet)
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28)).astype(np.float32)
    logits = model(x)
    assert logits.shape == (2, 10)
    gx = model.backward(np.ones_like(logits))
    assert gx.shape == x.shape
    assert all(p.grad.shape == p.data.shape for _, p in model.named_parameters())
    assert dmcp.count_flops(model, (1, 28, 28))["flops"] == 31021952


def test_auto_scale_lr(tmp_path):
    """mmengine's auto_scale_lr: off by default; enabled, both optimizers' rates scale by
    (ranks x batch) / base_batch_size; train.py --auto-scale-lr needs base_batch_size."""
    from dmcp.cli import load_config
    from dmcp.runner import Runner
    opts = ["train_dataloader.dataset.indices=128", "train_dataloader.batch_size=32",
            "val_dataloader.dataset.indices=64"]
    plain = Runner(load_config(SUPERNET, opts), work_dir=str(tmp_path / "a"))
    scaled = Runner(load_config(SUPERNET, opts + ["auto_scale_lr.base_batch_size=128",
                                                  "auto_scale_lr.enable=True"]),
                    work_dir=str(tmp_path / "b"))
    assert scaled.base_lr == pytest.approx(plain.base_lr * 32 / 128)
    assert scaled.arch_optimizer.param_groups[0]["lr"] == \
        pytest.approx(plain.arch_optimizer.param_groups[0]["lr"] * 32 / 128)
    scaled._set_lr()
    assert scaled.optimizer.param_groups[0]["lr"] == pytest.approx(plain.schedule.lr(0) / 4)
    _user_error(["tools/train.py", SUPERNET, "--auto-scale-lr", "--work-dir", str(tmp_path / "c")],
                "has no auto_scale_lr = dict(base_batch_size=N)")
    _user_error(["tools/train.py", SUPERNET, "--work-dir", str(tmp_path / "d"), "--cfg-options",
                 "auto_scale_lr.enable=True"], "'base_batch_size' is required")
    _user_error(["tools/train.py", SUPERNET, "--work-dir", str(tmp_path / "e"), "--cfg-options",
                 "auto_scale_lr.base_batch_sise=64"], "base_batch_sise")


def test_a_run_that_cannot_start_leaves_no_work_dir(tmp_path):
    wd = tmp_path / "never"
    _user_error(["tools/train.py", SUPERNET, "--work-dir", str(wd), "--cfg-options",
                 "model.target_flops=99999"], "nothing to prune")
    assert not wd.exists()
    # an existing work dir keeps what it had, and gets no empty log
    wd.mkdir()
    (wd / "keep.txt").write_text("x")
    _user_error(["tools/train.py", SUPERNET, "--work-dir", str(wd), "--cfg-options",
                 "model.target_flops=99999"], "nothing to prune")
    assert sorted(os.listdir(wd)) == ["keep.txt"]
