"""Write the seed corpora, tests/fuzz/corpus/<target>/, from scratch:

    python tests/fuzz/make_corpus.py

config: small .py/.yaml/.json configs (first byte picks the extension, see
targets.config_input); subnet: fix-subnet JSON of the fuzzed model plus inputs
for the structured mode; pth: torch.save files (zip format, and one legacy) and
dmcp.export.pth_bytes; npz: np.savez / savez_compressed / export.npz_bytes;
image: JPEG and PNG of several modes from Pillow and dmcp's encoder; kernels:
for every dmcp._C function a few inputs that call it.  Deterministic except for
the timestamps inside zip and image files.
"""
import io
import json
import os
import shutil
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import targets  # noqa: E402

CORPUS = os.path.join(HERE, "corpus")


def _write(target, name, data):
    os.makedirs(os.path.join(CORPUS, target), exist_ok=True)
    with open(os.path.join(CORPUS, target, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def config():
    ext = {e: bytes([i]) for i, e in enumerate(targets.CONFIG_EXTS)}
    _write("config", "plain.py", ext[".py"] + b"model = dict(type='ImageClassifier', "
           b"backbone=dict(type='ResNet_CIFAR', depth=8), head=dict(num_classes=10))\n"
           b"optim_wrapper = dict(optimizer=dict(type='SGD', lr=0.1 * 2, momentum=0.9))\n"
           b"train_cfg = dict(max_epochs=3)\n_private = 1\n")
    _write("config", "base.py", ext[".py"] + b"_base_ = ['base.py']\nmodel = dict(depth=20, "
           b"_delete_=True, type='X')\nlr = _base_.lr / 2\nitems = _base_.items\n")
    _write("config", "base_json.py", ext[".py"] + b"_base_ = 'base.json'\n"
           b"model = dict(type='Y')\n_base_.model.depth = 4\n")
    _write("config", "scope.py", ext[".py"] + b"_base_ = ['mmcls::_base_/default_runtime.py']\n"
           b"default_hooks = dict(logger=dict(interval=10))\n")
    _write("config", "bad_syntax.py", ext[".py"] + b"model = dict(type=\n")
    _write("config", "plain.yaml", ext[".yaml"] + b"model:\n  type: ImageClassifier\n"
           b"  backbone: {type: ResNet_CIFAR, depth: 8}\nlr: 0.1\nsteps: [1, 2, 3]\n")
    _write("config", "anchors.yaml", ext[".yaml"] + b"_base_: base.yaml\na: &x {k: [1, 2]}\n"
           b"b: *x\nc: {<<: *x, j: 2}\n")
    _write("config", "bases.yaml", ext[".yaml"] + b"_base_: [base.yaml, base.py]\n"
           b"model: {depth: 50, _delete_: true}\n")
    _write("config", "plain.json", ext[".json"] + json.dumps(
        {"model": {"type": "ImageClassifier", "head": {"num_classes": 10}},
         "lr": 0.1, "milestones": [30, 60], "flag": True, "none": None}).encode())
    _write("config", "base.json", ext[".json"] + b'{"_base_": ["base.json", "base.yaml"], '
           b'"model": {"depth": 1}}')
    _write("config", "list.json", ext[".json"] + b"[1, 2]")


def subnet():
    mut = targets._mutator()
    fix = mut.export_subnet()
    _write("subnet", "full.json", json.dumps(fix))
    for u, w in zip(mut.units, (8, 12, 16, 20, 40, 64)):
        u.set_width(min(w, u.num_channels))
    _write("subnet", "pruned.json", json.dumps(mut.export_subnet()))
    divisor = mut.export_subnet()
    for entry in divisor["channel_unit_cfg"]["units"].values():
        entry["init_args"].update(divisor=8, min_value=8)
        entry["choice"] -= 3
    _write("subnet", "divisor.json", json.dumps(divisor))
    _write("subnet", "bare.json", json.dumps({u.name: 8 for u in mut.units}))
    _write("subnet", "units.json", json.dumps({"units": {u.key: {"choice": 4} for u in mut.units}}))
    rng = np.random.default_rng(1)
    for i in range(8):                      # the structured mode (not starting with '{')
        _write("subnet", f"structured{i}", bytes([0x20 + i]) + rng.bytes(60))


def pth():
    import torch
    from dmcp.export import pth_bytes

    def save(name, obj, **kw):
        buf = io.BytesIO()
        torch.save(obj, buf, **kw)
        _write("pth", name, buf.getvalue())

    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(2, 3, 3)
    save("module_state.pth", conv.state_dict())
    save("dtypes.pth", {"f32": torch.randn(2, 3, generator=g), "f64": torch.zeros(2, dtype=torch.float64),
                        "f16": torch.ones(3, dtype=torch.float16), "i64": torch.arange(4),
                        "i32": torch.arange(3, dtype=torch.int32), "u8": torch.arange(5, dtype=torch.uint8),
                        "bool": torch.tensor([True, False]), "scalar": torch.tensor(1.5),
                        "empty": torch.zeros(0, 3)})
    base = torch.arange(12.0).reshape(3, 4)
    save("views.pth", {"t": base.t(), "slice": base[1:, ::2], "row": base[2], "base": base})
    save("mmcls.pth", {"meta": {"epoch": 3, "mmengine_version": "0.8", "seed": 1},
                       "state_dict": {"backbone.conv1.weight": torch.randn(4, 1, 3, 3, generator=g),
                                      "backbone.bn1.num_batches_tracked": torch.tensor(5)},
                       "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]}})
    save("parameter.pth", {"p": torch.nn.Parameter(torch.ones(2, 2))})
    save("legacy.pth", {"w": torch.ones(2)}, _use_new_zipfile_serialization=False)
    _write("pth", "export.pth", pth_bytes({"backbone.conv1.weight": np.ones((2, 1, 3, 3), np.float32),
                                          "head.fc.bias": np.arange(3, dtype=np.float32),
                                          "steps": np.array(7, np.int64)}))


def npz():
    from dmcp.export import npz_bytes

    def save(name, fn=np.savez, **arrays):
        buf = io.BytesIO()
        fn(buf, **arrays)
        _write("npz", name, buf.getvalue())

    save("state.npz", **{"state_dict/conv.weight": np.ones((2, 1, 3, 3), np.float32),
                         "state_dict/bn.running_var": np.arange(2, dtype=np.float32),
                         "meta/epoch": np.array(3)})
    save("compressed.npz", np.savez_compressed, **{"state_dict/w": np.zeros((4, 4), np.float64),
                                                    "state_dict/i": np.arange(6, dtype=np.int64)})
    save("fortran.npz", **{"state_dict/f": np.asfortranarray(np.arange(6.0).reshape(2, 3))})
    _write("npz", "export.npz", npz_bytes({"w": np.ones(3, np.float32)},
                                          {"units": {"backbone.conv1": 8}}))


def image():
    from PIL import Image
    from dmcp import _C
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 13, 3), dtype=np.uint8)
    im = Image.fromarray(rgb)

    def save(name, img, fmt, **kw):
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        _write("image", name, buf.getvalue())

    save("rgb.jpg", im, "JPEG", quality=80)
    save("rgb444.jpg", im, "JPEG", subsampling=0)
    save("progressive.jpg", im, "JPEG", progressive=True)
    save("gray.jpg", im.convert("L"), "JPEG")
    save("cmyk.jpg", im.convert("CMYK"), "JPEG")
    save("rgb.png", im, "PNG")
    save("rgba.png", im.convert("RGBA"), "PNG")
    save("gray.png", im.convert("L"), "PNG")
    save("palette.png", im.convert("P"), "PNG")
    save("bilevel.png", im.convert("1"), "PNG")
    save("interlaced.png", im, "PNG", interlace=1)
    save("gray16.png", Image.fromarray(rng.integers(0, 65535, (5, 7), dtype=np.uint16)), "PNG")
    _write("image", "dmcp.jpg", _C.encode_jpeg(rgb, 50))


def kernels():
    """Inputs that pick each function, found by trying deterministic random bytes."""
    rng = np.random.default_rng(2)
    want = {fn: 3 for fn in targets.KERNEL_FUNCTIONS}
    while any(want.values()):
        data = rng.bytes(int(rng.integers(24, 160)))
        fn = targets.kernel_function(data)
        if want[fn]:
            want[fn] -= 1
            _write("kernels", f"{fn}-{want[fn]}", data)


def main():
    shutil.rmtree(CORPUS, ignore_errors=True)
    for make in (config, subnet, pth, npz, image, kernels):
        make()
    for target in sorted(os.listdir(CORPUS)):
        files = os.listdir(os.path.join(CORPUS, target))
        size = sum(os.path.getsize(os.path.join(CORPUS, target, f)) for f in files)
        print(f"{target:8s} {len(files):3d} seeds, {size} bytes")
    targets.cleanup()


if __name__ == "__main__":
    main()
