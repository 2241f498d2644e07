"""Config loading, _base_ merging, --cfg-options and dumping (dmcp/config.py)."""
import copy
import json
import pickle
import textwrap

import pytest

from dmcp.config import Config, ConfigDict, ConfigError, parse_cfg_options


def write(folder, name, text):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------

def test_py_module_variables_form_the_config(tmp_path):
    path = write(tmp_path, "a.py", """
        import os
        from math import sqrt
        def helper(x):
            return x * 2
        _private = 3
        width = helper(_private)
        model = dict(type='ResNet', depth=50, out_indices=(3,))
        hooks = [dict(type='A', n=1), dict(type='B')]
        root = os.path.basename(__file__)
    """)
    cfg = Config.fromfile(path)
    assert set(cfg) == {"width", "model", "hooks", "root"}
    assert cfg.width == 6 and cfg["width"] == 6
    assert cfg.model.type == "ResNet" and cfg.model.out_indices == (3,)
    assert isinstance(cfg.model, ConfigDict) and isinstance(cfg.hooks[0], ConfigDict)
    assert cfg.hooks[0].n == 1
    assert cfg.root == "a.py"
    assert cfg.filename == str(path)


def test_yaml_and_json_load_the_same_schema(tmp_path):
    y = write(tmp_path, "a.yaml", """
        model:
          type: ResNet
          depth: 50
        hooks:
          - {type: A, n: 1}
        lr: 0.5
        flag: true
        none: null
    """)
    j = write(tmp_path, "a.json", json.dumps(
        {"model": {"type": "ResNet", "depth": 50}, "hooks": [{"type": "A", "n": 1}],
         "lr": 0.5, "flag": True, "none": None}))
    a, b = Config.fromfile(y), Config.fromfile(j)
    assert a.to_dict() == b.to_dict()
    assert a.model.depth == 50 and a.hooks[0].type == "A" and a.flag is True and a.none is None
    assert Config.fromfile(write(tmp_path, "b.yml", "x: 1\n")).x == 1
    assert len(Config.fromfile(write(tmp_path, "empty.yaml", ""))) == 0


def test_yaml_and_json_bases(tmp_path):
    write(tmp_path, "base.py", "a = dict(x=1, y=2)\nb = 3\n")
    y = write(tmp_path, "c.yaml", "_base_: base.py\na: {y: 20}\n")
    j = write(tmp_path, "c.json", '{"_base_": ["base.py"], "a": {"_delete_": true, "z": 1}}')
    assert Config.fromfile(y).to_dict() == {"a": {"x": 1, "y": 20}, "b": 3}
    assert Config.fromfile(j).to_dict() == {"a": {"z": 1}, "b": 3}


# ---------------------------------------------------------------------------
# _base_
# ---------------------------------------------------------------------------

def test_base_list_relative_paths(tmp_path):
    write(tmp_path, "_base_/models/net.py", "model = dict(type='Net', depth=18)\n")
    write(tmp_path, "_base_/schedule.py", "train_cfg = dict(max_epochs=100, val_interval=1)\n")
    path = write(tmp_path, "exp/cfg.py", """
        _base_ = ['../_base_/models/net.py', '../_base_/schedule.py']
        model = dict(depth=50)
    """)
    cfg = Config.fromfile(path)
    assert cfg.to_dict() == {"model": {"type": "Net", "depth": 50},
                             "train_cfg": {"max_epochs": 100, "val_interval": 1}}


def test_base_single_string_and_nested_chain(tmp_path):
    write(tmp_path, "a.py", "x = dict(a=1, b=dict(c=1, d=1))\nonly_a = 'a'\n")
    write(tmp_path, "sub/b.py", "_base_ = '../a.py'\nx = dict(b=dict(c=2))\nonly_b = 'b'\n")
    path = write(tmp_path, "sub/deeper/c.py", "_base_ = '../b.py'\nx = dict(b=dict(d=3), e=4)\n")
    cfg = Config.fromfile(path)
    assert cfg.to_dict() == {"x": {"a": 1, "b": {"c": 2, "d": 3}, "e": 4},
                             "only_a": "a", "only_b": "b"}


def test_later_bases_merge_over_earlier(tmp_path):
    write(tmp_path, "a.py", "x = dict(a=1, b=1)\n")
    write(tmp_path, "b.py", "x = dict(b=2)\n")
    path = write(tmp_path, "c.py", "_base_ = ['a.py', 'b.py']\n")
    assert Config.fromfile(path).x == {"a": 1, "b": 2}


def test_scope_base_resolves_to_package_config(tmp_path):
    path = write(tmp_path, "cfg.py", """
        _base_ = ['mmcls::_base_/default_runtime.py']
        default_hooks = dict(logger=dict(interval=50))
        randomness = dict(seed=2020, diff_rank_seed=True)
    """)
    cfg = Config.fromfile(path)
    assert cfg.default_scope == "mmcls"
    assert cfg.default_hooks.logger == {"type": "LoggerHook", "interval": 50}
    assert cfg.default_hooks.checkpoint == {"type": "CheckpointHook", "interval": 1}
    assert set(cfg.default_hooks) == {"timer", "logger", "param_scheduler", "checkpoint",
                                      "sampler_seed"}
    assert cfg.randomness == {"seed": 2020, "deterministic": False, "diff_rank_seed": True}
    assert cfg.log_level == "INFO" and cfg.load_from is None and cfg.resume is False
    assert "env_cfg" in cfg


def test_read_base_variables(tmp_path):
    write(tmp_path, "supernet.py", """
        supernet = dict(type='ImageClassifier', backbone=dict(type='ResNet', depth=50))
        model = dict(type='DMCP', architecture=supernet)
    """)
    path = write(tmp_path, "subnet.py", """
        _base_ = ['supernet.py']
        model = dict(_delete_=True, type='sub_model', cfg=_base_.supernet, mode='mutator')
        arch_depth = _base_.model.architecture.backbone.depth
        arch_type = _base_['model']['architecture']['type']
    """)
    cfg = Config.fromfile(path)
    assert cfg.model.to_dict() == {
        "type": "sub_model", "mode": "mutator",
        "cfg": {"type": "ImageClassifier", "backbone": {"type": "ResNet", "depth": 50}}}
    assert cfg.arch_depth == 50 and cfg.arch_type == "ImageClassifier"
    assert cfg.supernet.backbone.depth == 50


def test_reads_of_base_are_copies(tmp_path):
    write(tmp_path, "base.py", "supernet = dict(backbone=dict(depth=50))\n")
    path = write(tmp_path, "child.py", """
        _base_ = 'base.py'
        model = dict(architecture=_base_.supernet)
        small = _base_.supernet
        small.backbone.depth = 18
        again = _base_.supernet
    """)
    cfg = Config.fromfile(path)
    assert cfg.small.backbone.depth == 18
    assert cfg.model.architecture.backbone.depth == 50
    assert cfg.again.backbone.depth == 50
    assert cfg.supernet.backbone.depth == 50
    # no shared objects in the result
    cfg.model.architecture.backbone.depth = 34
    assert cfg.again.backbone.depth == 50 and cfg.supernet.backbone.depth == 50


def test_assign_into_base(tmp_path):
    write(tmp_path, "base.py", """
        optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.5, momentum=0.9))
        train_cfg = dict(by_epoch=True, max_epochs=100, val_interval=1)
        custom_hooks = [dict(type='A')]
        param_scheduler = [dict(type='LinearLR', end=10), dict(type='CosineAnnealingLR', T_max=100)]
        gone = 1
    """)
    path = write(tmp_path, "child.py", """
        _base_ = ['base.py']
        _base_.optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.8, nesterov=True))
        _base_.train_cfg.max_epochs = 3
        _base_['train_cfg']['val_interval'] += 1
        _base_.param_scheduler[1].T_max = 3
        _base_.custom_hooks.append(dict(type='B'))
        del _base_.gone
        seen = _base_.train_cfg.max_epochs
        if True:
            _base_.flag = 'set in a block'
    """)
    cfg = Config.fromfile(path)
    assert cfg.optim_wrapper.to_dict() == {
        "optimizer": {"type": "SGD", "lr": 0.8, "nesterov": True}}
    assert cfg.train_cfg.to_dict() == {"by_epoch": True, "max_epochs": 3, "val_interval": 2}
    assert cfg.param_scheduler[1].T_max == 3 and cfg.param_scheduler[0].end == 10
    assert [h.type for h in cfg.custom_hooks] == ["A", "B"]
    assert "gone" not in cfg
    assert cfg.seen == 3 and cfg.flag == "set in a block"


def test_child_variable_wins_over_base_assignment(tmp_path):
    write(tmp_path, "base.py", "train_cfg = dict(max_epochs=100, val_interval=1)\n")
    path = write(tmp_path, "child.py", """
        _base_ = 'base.py'
        _base_.train_cfg = dict(max_epochs=5, by_epoch=True)
        train_cfg = dict(max_epochs=7)
    """)
    assert Config.fromfile(path).train_cfg == {"max_epochs": 7, "by_epoch": True}


def test_delete_replaces_instead_of_merging(tmp_path):
    write(tmp_path, "base.py", """
        model = dict(type='A', backbone=dict(type='ResNet', depth=50, style='pytorch'), neck=None)
        optim = dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9))
    """)
    path = write(tmp_path, "child.py", """
        _base_ = 'base.py'
        model = dict(backbone=dict(_delete_=True, type='MobileNetV2', widen_factor=1.0))
        optim = dict(optimizer=dict(_delete_=True, type='Adam', lr=0.5),
                     new=dict(_delete_=True, a=1))
    """)
    cfg = Config.fromfile(path)
    assert cfg.model.to_dict() == {"type": "A", "neck": None,
                                   "backbone": {"type": "MobileNetV2", "widen_factor": 1.0}}
    assert cfg.optim.to_dict() == {"optimizer": {"type": "Adam", "lr": 0.5}, "new": {"a": 1}}


def test_merge_semantics_lists_and_scalars_replace(tmp_path):
    write(tmp_path, "base.py", """
        a = dict(lst=[dict(x=1), dict(y=2)], tup=(1, 2), s=1, d=dict(k=1), n=dict(m=1))
        b = [1, 2, 3]
        _scope_note = 'dropped: private name'
        c = dict(_scope_='mmrazor', type='mmcls.LabelSmoothLoss')
    """)
    path = write(tmp_path, "child.py", """
        _base_ = 'base.py'
        a = dict(lst=[dict(z=3)], tup=(9,), s=dict(now='a dict'), d=5, n=dict(o=2))
        b = (4,)
    """)
    cfg = Config.fromfile(path)
    assert cfg.a.to_dict() == {"lst": [{"z": 3}], "tup": (9,), "s": {"now": "a dict"}, "d": 5,
                               "n": {"m": 1, "o": 2}}
    assert cfg.b == (4,)
    assert cfg.c == {"_scope_": "mmrazor", "type": "mmcls.LabelSmoothLoss"}


# ---------------------------------------------------------------------------
# ConfigDict / Config objects
# ---------------------------------------------------------------------------

def test_configdict_attribute_access():
    d = ConfigDict(model=dict(backbone=dict(depth=50)), hooks=[dict(type="A")])
    assert d.model.backbone.depth == 50
    d.model.neck = dict(type="GAP")
    assert isinstance(d.model.neck, ConfigDict) and d.model.neck.type == "GAP"
    d.hooks.append(dict(type="B"))
    assert d.hooks[1].type == "B"
    assert d.get("model").backbone.depth == 50
    with pytest.raises(AttributeError, match="'modle'.*did you mean 'model'"):
        d.modle
    del d.model
    assert "model" not in d
    assert pickle.loads(pickle.dumps(d)) == d
    dc = copy.deepcopy(d)
    assert dc == d and dc.hooks is not d.hooks and isinstance(dc.hooks[0], ConfigDict)
    assert type(d.to_dict()["hooks"][0]) is dict


def test_config_attribute_item_access_and_assignment():
    cfg = Config(dict(model=dict(type="A")), filename="x.py")
    assert cfg.model.type == "A" and cfg["model"]["type"] == "A"
    cfg.work_dir = "w"
    cfg["seed"] = 1
    assert cfg.to_dict() == {"model": {"type": "A"}, "work_dir": "w", "seed": 1}
    assert "work_dir" in cfg and len(cfg) == 3 and cfg.get("nope", 5) == 5
    with pytest.raises(AttributeError, match="nope"):
        cfg.nope
    c2 = copy.deepcopy(cfg)
    c2.model.type = "B"
    assert cfg.model.type == "A" and c2.filename == "x.py"
    assert pickle.loads(pickle.dumps(cfg)).to_dict() == cfg.to_dict()


# ---------------------------------------------------------------------------
# --cfg-options
# ---------------------------------------------------------------------------

def test_parse_cfg_options_value_kinds():
    opts = parse_cfg_options([
        "a.b.c=1", "f=0.5", "e=1e-3", "neg=-2", "t=True", "fl=false", "n=None", "s=hello",
        "l=[1,2]", "comma=1,2", "tup=(1,2)", "one=(3,)", "nested=[(1,2),(3,4)]",
        "deep=[[1,[2,3]],(4,)]", "q='1'", 'dq="a,b"', "mixed=[a, 'b,c', 2.5]",
        "empty=[]", "blank=", "path=data/imagenet", "eq=a=b",
    ])
    assert opts == {
        "a.b.c": 1, "f": 0.5, "e": 0.001, "neg": -2, "t": True, "fl": False, "n": None,
        "s": "hello", "l": [1, 2], "comma": [1, 2], "tup": (1, 2), "one": (3,),
        "nested": [(1, 2), (3, 4)], "deep": [[1, [2, 3]], (4,)], "q": "1", "dq": "a,b",
        "mixed": ["a", "b,c", 2.5], "empty": [], "blank": "", "path": "data/imagenet",
        "eq": "a=b",
    }
    assert type(opts["a.b.c"]) is int and type(opts["f"]) is float
    assert parse_cfg_options(None) == {}


@pytest.mark.parametrize("bad", ["novalue", "=1", "a..b=1", "k=[1,2", "k=(1,2]]", "k=[1,,2]"])
def test_parse_cfg_options_errors(bad):
    with pytest.raises(ConfigError):
        parse_cfg_options([bad])


def test_merge_from_dict_paths_and_list_indexing():
    cfg = Config(dict(
        model=dict(backbone=dict(depth=50, out_indices=(3,))),
        custom_hooks=[dict(type="DMCPSubnetHook", subnet_sample_num=10)],
        optim=dict(optimizer=dict(type="SGD", lr=0.5, momentum=0.9))))
    cfg.merge_from_dict(parse_cfg_options([
        "model.backbone.depth=18", "custom_hooks.0.subnet_sample_num=2",
        "model.backbone.out_indices.0=2", "train_cfg.max_epochs=3", "work_dir=w",
    ]))
    cfg.merge_from_dict({"optim": dict(optimizer=dict(lr=0.1)),
                         "model.neck": dict(type="GAP")})
    assert cfg.model.backbone.depth == 18
    assert cfg.model.backbone.out_indices == (2,)
    assert cfg.custom_hooks[0].to_dict() == {"type": "DMCPSubnetHook", "subnet_sample_num": 2}
    assert cfg.train_cfg.max_epochs == 3 and cfg.work_dir == "w"
    assert cfg.optim.optimizer.to_dict() == {"type": "SGD", "lr": 0.1, "momentum": 0.9}
    assert cfg.model.neck.type == "GAP"
    cfg.merge_from_dict({"optim": dict(_delete_=True, optimizer=dict(type="Adam"))})
    assert cfg.optim.to_dict() == {"optimizer": {"type": "Adam"}}


@pytest.mark.parametrize("key, message", [
    ("custom_hooks.5.subnet_sample_num", r"'custom_hooks\.5\.subnet_sample_num'.*index 5 out of "
                                         r"range.*'custom_hooks' is a list of length 1"),
    ("custom_hooks.first.x", r"'custom_hooks\.first\.x'.*must be an index"),
    ("model.depth.x", r"'model\.depth\.x'.*'model\.depth' is 50 \(int\)"),
    ("nothing.x", r"'nothing\.x'.*'nothing' is None"),
])
def test_merge_from_dict_bad_paths(key, message):
    cfg = Config(dict(model=dict(depth=50), custom_hooks=[dict(type="H")], nothing=None))
    with pytest.raises(ConfigError, match=message):
        cfg.merge_from_dict({key: 1})


# ---------------------------------------------------------------------------
# dump
# ---------------------------------------------------------------------------

ROUND_TRIP = dict(
    model=dict(type="DMCP", architecture=dict(
        type="ImageClassifier",
        backbone=dict(type="ResNet", depth=50, num_stages=4, out_indices=(3,), style="pytorch"),
        head=dict(type="LinearClsHead", num_classes=1000, in_channels=2048, topk=(1, 5),
                  loss=dict(type="LabelSmoothLoss", label_smooth_val=0.1))),
        pruning_cfg=(0.1, 1.0, 0.05), target_flops=2000, _scope_="mmrazor"),
    mean=[123.675, 116.28, 103.53], tiny=1e-300, big=float("inf"), nan_free=-0.0,
    strings=["it's", 'say "hi"', "tab\there", "ünï"], empty=dict(), empty_list=[], empty_tuple=(),
    odd_keys={"a-b": 1, 2: "two", "class": 3}, flags=(True, False, None),
    hooks=[dict(type="DMCPSubnetHook", subnet_sample_num=10)] * 3,
    long_list=list(range(40)),
)


def test_dump_py_round_trip(tmp_path):
    cfg = Config(ROUND_TRIP)
    out = tmp_path / "dumped.py"
    cfg.dump(out)
    text = out.read_text()
    assert max(len(line) for line in text.splitlines()) <= 79
    again = Config.fromfile(out)
    assert again.to_dict() == cfg.to_dict()
    assert again.model.pruning_cfg == (0.1, 1.0, 0.05) and again.big == float("inf")
    assert cfg.dump() == text == cfg.pretty_text
    # dumping the reloaded file gives the same text
    assert again.pretty_text == text


def test_dump_loaded_config_round_trip(tmp_path):
    write(tmp_path, "base.py", "a = dict(x=1, y=[1, 2])\n")
    path = write(tmp_path, "c.py", "_base_ = 'base.py'\n_base_.a.x = 2\nb = (1,)\n")
    cfg = Config.fromfile(path)
    cfg.dump(tmp_path / "resolved.py")
    assert Config.fromfile(tmp_path / "resolved.py").to_dict() == {"a": {"x": 2, "y": [1, 2]},
                                                                   "b": (1,)}


@pytest.mark.parametrize("ext", [".json", ".yaml", ".yml"])
def test_dump_json_yaml_round_trip(tmp_path, ext):
    cfg = Config(dict(model=dict(type="A", sizes=[1, 2.5], name="x"), flag=False, none=None))
    out = tmp_path / f"c{ext}"
    cfg.dump(out)
    assert Config.fromfile(out).to_dict() == cfg.to_dict()


def test_dump_errors(tmp_path):
    with pytest.raises(ConfigError, match="unsupported config file extension '.txt'"):
        Config(dict(a=1)).dump(tmp_path / "c.txt")
    with pytest.raises(ConfigError, match="'a-b'"):
        Config({"a-b": 1}).dump(tmp_path / "c.py")
    with pytest.raises(ConfigError, match=r"'m\.fn'"):
        Config(dict(m=dict(fn=object()))).dump(tmp_path / "c.py")


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------

def test_error_missing_base_names_referencing_file(tmp_path):
    path = write(tmp_path, "child.py", "_base_ = ['missing_base.py']\n")
    with pytest.raises(ConfigError, match=r"child\.py: _base_ file not found: 'missing_base\.py'"):
        Config.fromfile(path)
    inner = write(tmp_path, "mid.py", "_base_ = 'gone/deep.py'\n")
    top = write(tmp_path, "top.py", "_base_ = 'mid.py'\n")
    with pytest.raises(ConfigError, match=rf"{inner}: _base_ file not found: 'gone/deep\.py'"):
        Config.fromfile(top)
    scoped = write(tmp_path, "scoped.py", "_base_ = 'mmdet::_base_/x.py'\n")
    with pytest.raises(ConfigError, match="unknown config scope 'mmdet'.*mmcls"):
        Config.fromfile(scoped)


def test_error_syntax_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.py", "a = 1\nmodel = dict(type='A'\nb = 2\n")
    with pytest.raises(ConfigError, match=rf"{path}:2: invalid syntax") as info:
        Config.fromfile(path)
    assert "\n" not in str(info.value)


def test_error_runtime_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.py", "a = 1\nb = undefined_name + 1\n")
    with pytest.raises(ConfigError, match=rf"{path}:2: NameError: .*undefined_name"):
        Config.fromfile(path)
    write(tmp_path, "base.py", "a = dict(x=1)\n")
    child = write(tmp_path, "child.py", "_base_ = 'base.py'\nb = _base_.nope\n")
    with pytest.raises(ConfigError, match=rf"{child}:2: AttributeError: _base_ has no key 'nope'"):
        Config.fromfile(child)


def test_error_bad_extension_missing_file_bad_data(tmp_path):
    with pytest.raises(ConfigError, match=r"unsupported config file extension '\.txt'"):
        Config.fromfile(write(tmp_path, "cfg.txt", "a = 1\n"))
    with pytest.raises(ConfigError, match=r"config file not found: .*nowhere\.py"):
        Config.fromfile(tmp_path / "nowhere.py")
    with pytest.raises(ConfigError, match=r"bad\.yaml:2: invalid YAML"):
        Config.fromfile(write(tmp_path, "bad.yaml", "a: 1\nb: x: y\n"))
    with pytest.raises(ConfigError, match=r"bad\.json:1: invalid JSON"):
        Config.fromfile(write(tmp_path, "bad.json", "{'a': 1}"))
    with pytest.raises(ConfigError, match=r"list\.yaml: the top level must be a mapping"):
        Config.fromfile(write(tmp_path, "list.yaml", "- 1\n"))


def test_error_bad_base_declarations(tmp_path):
    with pytest.raises(ConfigError, match=r"b\.py:1: _base_ must be a string or a list"):
        Config.fromfile(write(tmp_path, "b.py", "_base_ = 3\n"))
    write(tmp_path, "x.py", "_base_ = 'y.py'\n")
    write(tmp_path, "y.py", "_base_ = 'x.py'\n")
    with pytest.raises(ConfigError, match="circular _base_"):
        Config.fromfile(tmp_path / "x.py")


# ---------------------------------------------------------------------------
# user mistakes: a config that exits, misspelt option keys, unknown model keys
# ---------------------------------------------------------------------------

def test_py_config_that_exits_or_raises_is_a_config_error(tmp_path):
    path = write(tmp_path, "exits.py", "import sys\na = 1\nsys.exit(0)\n")
    with pytest.raises(ConfigError, match=rf"^{path}:3: the config exited \(sys\.exit\(0\)\) "
                                          rf"while being read$"):
        Config.fromfile(path)
    write(tmp_path, "base.py", "raise SystemExit('bye')\n")
    child = write(tmp_path, "child.py", "_base_ = 'base.py'\n")
    with pytest.raises(ConfigError, match=r"base\.py:1: the config exited \(sys\.exit\('bye'\)\)"):
        Config.fromfile(child)
    raises = write(tmp_path, "raises.py", "a = 1\n\nraise ValueError('no data here')\n")
    with pytest.raises(ConfigError, match=rf"^{raises}:3: ValueError: no data here$"):
        Config.fromfile(raises)


@pytest.mark.parametrize("name, code", [("exits.py", "import sys\nsys.exit(0)\n"),
                                        ("raises.py", "x = {}['missing']\n")])
def test_get_flops_on_a_config_that_exits_fails_with_one_line(tmp_path, name, code):
    import os
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = write(tmp_path, name, code)
    r = subprocess.run([sys.executable, os.path.join(repo, "tools", "get_flops.py"), str(path)],
                       capture_output=True, text=True, timeout=120, cwd=repo)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith(f"error: {path}:") and r.stderr.count("\n") == 1, r.stderr


def test_cfg_options_refuse_an_unknown_top_level_key(tmp_path):
    from dmcp.cli import load_config
    from dmcp.config import RUNTIME_KEYS
    path = write(tmp_path, "cfg.py", """
        my_epochs = 3
        train_cfg = dict(by_epoch=True, max_epochs=my_epochs)
    """)
    with pytest.raises(ConfigError, match=r"^--cfg-options trian_cfg\.max_epochs: 'trian_cfg' is "
                                          r"neither a key of the config nor one the runner reads "
                                          r"\(did you mean 'train_cfg'\?\)$"):
        load_config(path, ["trian_cfg.max_epochs=1"])
    # the config's own variables, keys the runner reads and new keys below known ones pass
    cfg = load_config(path, ["my_epochs=1", "load_from=w.npz", "val_cfg.x=1",
                             "train_cfg.val_interval=2", "default_hooks.logger.interval=1"])
    assert cfg.my_epochs == 1 and cfg.load_from == "w.npz" and cfg.train_cfg.val_interval == 2
    assert {"model", "train_cfg", "optim_wrapper", "load_from", "resume", "work_dir",
            "default_scope", "visualizer"} <= RUNTIME_KEYS


def test_check_keys_lists_the_accepted_keys_with_a_did_you_mean():
    from dmcp.config import check_keys
    from dmcp.units import UserError
    check_keys("X", {"a": 1}, ("a", "b"))
    with pytest.raises(UserError, match=r"^X: unknown key 'depht' \(did you mean 'depth'\?\); "
                                        r"accepted keys: depth, width$"):
        check_keys("X", {"depht": 1}, ("width", "depth"))
    with pytest.raises(UserError, match=r"^X: unknown keys 'q', 'widht' \(did you mean 'width'\?\); "
                                        r"accepted keys: depth, width$"):
        check_keys("X", {"q": 1, "widht": 2}, ("width", "depth"))
    with pytest.raises(UserError, match=r"accepted keys: none$"):
        check_keys("X", {"q": 1}, ())


DMCP_MODEL = dict(
    type="DMCP",
    architecture=dict(type="ImageClassifier", backbone=dict(type="ResNet_CIFAR", depth=8,
                                                            in_channels=1),
                      head=dict(type="LinearClsHead", num_classes=3)),
    mutator_cfg=dict(parse_cfg=dict(demo_input=(1, 1, 8, 8))),
    target_flops=0.1)


def test_dmcp_key_errors_list_its_real_keys():
    from dmcp.algorithm import build_algorithm_model
    from dmcp.units import UserError
    with pytest.raises(UserError, match=r"^model \(DMCP\): unknown key 'arch_strat_train' \(did you "
                                        r"mean 'arch_start_train'\?\); accepted keys: .*"
                                        r"arch_start_train.*distiller.*target_flops") as info:
        build_algorithm_model(dict(DMCP_MODEL, arch_strat_train=3))
    assert "seed" not in str(info.value).split("accepted keys:")[1].split(", ")


def test_dmcp_distiller_must_be_what_dmcp_implements():
    from dmcp.algorithm import build_algorithm_model
    from dmcp.units import UserError
    shipped = dict(type="ConfigurableDistiller",
                   distill_losses=dict(loss_kl=dict(type="KLDivergence", tau=2, loss_weight=0.5)),
                   loss_forward_mappings=dict(loss_kl=dict(
                       preds_S=dict(recorder="fc", from_student=True),
                       preds_T=dict(recorder="fc", from_student=False))))
    model = build_algorithm_model(dict(DMCP_MODEL, distiller=shipped))
    assert (model.tau, model.kd.tau, model.kd.loss_weight) == (2.0, 2.0, 0.5)
    for distiller, message in [
            (dict(type="mmrazor.SelfDistiller"), r"type 'SelfDistiller' is not supported"),
            (dict(shipped, distill_losses=dict(l=dict(type="MSELoss"))),
             r"distill_losses\.l: loss type 'MSELoss' is not supported \(KLDivergence\)"),
            (dict(shipped, distill_losses=dict(loss_kl=dict(type="KLDivergence", tua=1))),
             r"unknown key 'tua' \(did you mean 'tau'\?\)"),
            (dict(shipped, distill_losses={}), r"exactly one loss"),
            (dict(shipped, loss_forward_mappings=dict(loss_kl=dict(
                preds_S=dict(recorder="neck", from_student=True)))), r"recorder 'neck'"),
            (dict(shipped, connectors={}), r"unknown key 'connectors'")]:
        with pytest.raises(UserError, match=r"^model\.distiller.*" + message):
            build_algorithm_model(dict(DMCP_MODEL, distiller=distiller))


def test_a_string_num_channels_is_named_as_a_string(tmp_path):
    from dmcp.algorithm import build_classifier, build_pruned
    from dmcp.units import Mutator, UserError, apply_subnet
    arch = DMCP_MODEL["architecture"]
    fix = {"backbone.conv1_(0, 16)_16": {"init_args": {"num_channels": "16"}, "choice": 8}}
    message = r"unit 'backbone\.conv1_\(0, 16\)_16' declares num_channels '16', a str, not an integer$"
    with pytest.raises(UserError, match=message):
        build_pruned(arch, fix)
    with pytest.raises(UserError, match=message):
        apply_subnet(Mutator(build_classifier(arch)), fix)
    fix["backbone.conv1_(0, 16)_16"]["init_args"]["num_channels"] = 32
    with pytest.raises(UserError, match=r"declares num_channels 32, but the model's unit has 16$"):
        build_pruned(arch, fix)
