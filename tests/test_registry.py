"""One registry builder (config.build) for every kind of object a config names:
an unknown type gets a did-you-mean naming where it was written, a misspelt key
is named with its type, and no two dmcp modules import each other."""
import ast
import os

import numpy as np
import pytest

import dmcp
from dmcp.config import UserError, build, strip_scope
from dmcp.data import build_dataloader, build_dataset
from dmcp.optim import LRSchedule, build_optimizer
from dmcp.runner import subnet_hook_of

PACKAGE = os.path.dirname(os.path.abspath(dmcp.__file__))


def make(a, b=2, where=None):
    return (a, b, where)


def test_build_calls_the_type_with_its_keys():
    reg = {"Make": make}
    assert build(reg, dict(type="mmrazor.Make", _scope_="mmrazor", a=1), "x") == (1, 2, "x (Make)")
    assert build(reg, dict(b=3), "x", 0, default="Make") == (0, 3, "x (Make)")
    assert strip_scope("mmcls.LabelSmoothLoss") == "LabelSmoothLoss" and strip_scope(None) is None


def test_build_refuses_by_name():
    reg = {"Make": make, "Other": make}
    with pytest.raises(UserError, match=r"^x: unknown thing type 'Mkae' \(did you mean 'Make'\?\); "
                                        r"known: Make, Other$"):
        build(reg, dict(type="Mkae"), "x", what="thing")
    with pytest.raises(UserError, match=r"^x: missing 'type' \(one of Make, Other\)$"):
        build(reg, {}, "x")
    with pytest.raises(UserError, match=r"^x: unknown type \['Make'\]"):
        build(reg, dict(type=["Make"]), "x")
    with pytest.raises(UserError, match=r"^x: expected a dict\(type=\.\.\.\), got 3$"):
        build(reg, 3, "x")
    with pytest.raises(UserError, match=r"^x \(Make\): unknown key 'bb' \(did you mean 'b'\?\); "
                                        r"accepted keys: a, b$"):
        build(reg, dict(type="Make", a=1, bb=2), "x")
    with pytest.raises(UserError, match=r"^x \(Make\): 'a' is required$"):
        build(reg, dict(type="Make"), "x")
    # what the builder passes (positionally, by keyword, or keeps internal) is no config key
    with pytest.raises(UserError, match=r"unknown key 'a'.*accepted keys: b$"):
        build(reg, dict(type="Make", a=1), "x", 0)
    with pytest.raises(UserError, match=r"unknown key 'b'.*accepted keys: a$"):
        build(reg, dict(type="Make", a=1, b=1), "x", internal=("b",))


def model(**over):
    """A tiny classifier config with ``over`` merged into its parts."""
    cfg = dict(type="ImageClassifier",
               backbone=dict(type="ResNet_CIFAR", depth=8, in_channels=1),
               neck=dict(type="GlobalAveragePooling"),
               head=dict(type="LinearClsHead", num_classes=3,
                         loss=dict(type="CrossEntropyLoss")))
    for part, extra in over.items():
        if part == "loss":
            cfg["head"]["loss"].update(extra)
        else:
            cfg[part].update(extra)
    return cfg


def optimizer(**cfg):
    params = [dmcp.nn.Parameter(np.zeros(2, np.float32))]
    return build_optimizer(cfg, params, "optim_wrapper.optimizer")


def sgd(**cfg):
    return optimizer(**dict(dict(lr=0.1), **cfg))


def scheduler(**cfg):
    return LRSchedule([dict(cfg, by_epoch=False, begin=0, end=10)], 0.1, 5, 10)


def hook(**cfg):
    return subnet_hook_of(dict(custom_hooks=[cfg]))


def dataset(**cfg):
    return build_dataset(dict(dict(num_samples=4, num_classes=3, image_shape=(1, 8, 8)), **cfg),
                         "train_dataloader.dataset")


def loader(**sampler):
    return build_dataloader(dict(batch_size=2, dataset=dict(type="SyntheticDataset", num_samples=4,
                                                            num_classes=3, image_shape=(1, 8, 8)),
                                 sampler=sampler), where="train_dataloader")


# one row per kind: (builder, good type, misspelt type, its did-you-mean, where it is named)
KINDS = {
    "backbone": (lambda **c: dmcp.build_model(model(backbone=c)), "ResNet_CIFAR", "ResNet_CIFRA",
                 "ResNet_CIFAR", r"backbone"),
    "neck": (lambda **c: dmcp.build_model(model(neck=c)), "GlobalAveragePooling",
             "GlobalAveragePoolng", "GlobalAveragePooling", r"neck"),
    "head": (lambda **c: dmcp.build_model(model(head=c)), "LinearClsHead", "LinearClsHaed",
             "LinearClsHead", r"head"),
    "loss": (lambda **c: dmcp.build_model(model(loss=c)), "LabelSmoothLoss", "LabelSmothLoss",
             "LabelSmoothLoss", r"head\.loss"),
    "optimizer": (sgd, "SGD", "AdamW", "Adam", r"optim_wrapper\.optimizer"),
    "scheduler": (scheduler, "CosineAnnealingLR", "CosineAnealingLR", "CosineAnnealingLR",
                  r"param_scheduler\[0\]"),
    "hook": (hook, "DMCPSubnetHook", "DMCPSubnetHok", "DMCPSubnetHook", r"custom_hooks\[0\]"),
    "dataset": (dataset, "SyntheticDataset", "SynthticDataset", "SyntheticDataset",
                r"train_dataloader\.dataset"),
    "sampler": (loader, "DefaultSampler", "DefaultSample", "DefaultSampler",
                r"train_dataloader\.sampler"),
    "model": (lambda **c: dmcp.build_model(dict(model(), **c)), "ImageClassifier",
              "ImageClasifier", "ImageClassifier", r"model"),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_an_unknown_type_says_where_and_what_was_meant(kind):
    make_one, _, wrong, meant, where = KINDS[kind]
    with pytest.raises(UserError, match=rf"^{where}: unknown {kind} type '{wrong}' \(did you "
                                        rf"mean '{meant}'\?\); known: .*{meant}"):
        make_one(type=f"mmrazor.{wrong}")


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_misspelt_key_is_named_with_its_type(kind):
    make_one, good, _, _, where = KINDS[kind]
    make_one(type=f"mmcls.{good}")                 # the scope is ignored, the defaults build
    with pytest.raises(UserError, match=rf"^{where} \({good}\): unknown key 'lrr' \(did you "
                                        rf"mean 'lr'\?\)" if kind == "optimizer" else
                                        rf"^{where} \({good}\): unknown key 'lrr'") as info:
        make_one(type=good, lrr=1)
    assert "accepted keys:" in str(info.value) and "\n" not in str(info.value)


def test_keys_the_builder_fills_are_not_offered():
    with pytest.raises(UserError) as info:
        dmcp.build_model(model(head=dict(rng=1)))
    accepted = str(info.value).split("accepted keys: ")[1].split(", ")
    assert "num_classes" in accepted and not {"rng", "in_unit", "pruned"} & set(accepted)
    with pytest.raises(UserError, match=r"^head\.loss \(LabelSmoothLoss\): unknown key "
                                        r"'head_classes'"):
        dmcp.build_model(model(loss=dict(type="LabelSmoothLoss", head_classes=3)))
    with pytest.raises(UserError, match=r"^head \(LinearClsHead\): 'num_classes' is required$"):
        dmcp.build_model(dict(model(), head=dict(type="LinearClsHead")))
    with pytest.raises(UserError, match=r"^optim_wrapper\.optimizer \(SGD\): 'lr' is required$"):
        optimizer(type="SGD")


def test_values_the_factories_do_not_run_are_refused():
    for part, cfg, words in [
            ("loss", dict(type="LabelSmoothLoss", mode="multi_label"), "only mode='original'"),
            ("loss", dict(type="LabelSmoothLoss", num_classes=4), "num_classes=4 but the head has 3"),
            ("loss", dict(type="CrossEntropyLoss", use_sigmoid=True), "use_sigmoid/use_soft"),
            ("neck", dict(dim=3), "dim=3 is not supported")]:
        with pytest.raises(UserError, match=words):
            dmcp.build_model(model(**{part: cfg}))
    with pytest.raises(UserError, match=r"optim_wrapper\.optimizer \(Adam\): amsgrad"):
        optimizer(type="Adam", amsgrad=True)


def _imports(path):
    """dmcp modules a module imports, at the top or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            names.update([node.module.split(".")[0]] if node.module else
                         [a.name for a in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("dmcp."):
            names.add(node.module.split(".")[1])
    return names - {"_C"}


def test_no_dmcp_module_imports_another_that_imports_it_back():
    graph = {f[:-3]: _imports(os.path.join(PACKAGE, f)) for f in os.listdir(PACKAGE)
             if f.endswith(".py") and f != "__init__.py"}

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for dep in graph.get(todo.pop(), ()):
                if dep not in seen:
                    seen.add(dep)
                    todo.append(dep)
        return seen
    assert not [m for m in graph if m in reach(m)], graph
    assert "algorithm" not in reach("models") and "runner" not in reach("checkpoint")
