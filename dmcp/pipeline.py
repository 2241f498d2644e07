"""The default main job: DMCP search, retraining of the sampled pruned net, and
evaluation, with a short result table (tools/pipeline.py)."""
import argparse
import json
import os

from .config import load_config
from .flops import count_flops
from .runner import Runner
from .units import UserError

DEFAULT_SUPERNET = "configs/dmcp_resnet20_fmnist_supernet.py"
DEFAULT_SUBNET = "configs/dmcp_resnet20_fmnist_subnet.py"


def _config_path(name):
    """Shipped configs resolve from the checkout or from the current folder."""
    if os.path.exists(name):
        return name
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), name)
    return here if os.path.exists(here) else name


def _export_onnx(retrain, shape, fix_subnet, path):
    """The retrained pruned net as ONNX (BN folded) when the export extra is
    installed: (path or None, the table's note)."""
    from .export import import_onnx, to_onnx, write_atomic
    try:
        import_onnx()
    except UserError:
        retrain.log.info("ONNX export skipped: pip install 'dmcp[export]' to get "
                         "work_dirs/.../pruned.onnx (or run tools/export.py later)")
        return None, "not written: pip install 'dmcp[export]'"
    retrain.net.eval()
    with open(fix_subnet) as f:
        meta = {"fix_subnet": f.read(), "input_shape": json.dumps(list(shape)), "producer": "dmcp"}
    data = to_onnx(retrain.net, shape, metadata=meta).SerializeToString()
    write_atomic(path, data)
    retrain.log.info(f"Exported the pruned net: {path} ({len(data) / 1e6:.2f} MB)")
    return path, f"{path} ({len(data) / 1e6:.2f} MB)"


def pipeline_main(argv):
    p = argparse.ArgumentParser(prog="pipeline.py", description="Search (DMCP supernet), retrain "
                                "the expected-width subnet, evaluate; print a result table.")
    p.add_argument("--supernet", default=DEFAULT_SUPERNET)
    p.add_argument("--subnet", default=DEFAULT_SUBNET)
    p.add_argument("--work-dir", default="work_dirs/pipeline")
    p.add_argument("--cfg-options", nargs="+", default=[],
                   help="applied to both configs (e.g. train_dataloader.dataset.indices=512)")
    p.add_argument("--supernet-options", nargs="+", default=[])
    p.add_argument("--subnet-options", nargs="+", default=[])
    args = p.parse_args(argv)

    super_dir = os.path.join(args.work_dir, "supernet")
    sub_dir = os.path.join(args.work_dir, "subnet")
    scfg = load_config(_config_path(args.supernet), args.cfg_options + args.supernet_options)
    search = Runner(scfg, work_dir=super_dir)
    search.train()
    fix_subnet = os.path.join(super_dir, "model_sample", "expected_ch.json")

    rcfg = load_config(_config_path(args.subnet), args.cfg_options + args.subnet_options +
                       [f"model.fix_subnet={fix_subnet}"])
    retrain = Runner(rcfg, work_dir=sub_dir)
    retrain.train()
    result = retrain.evaluate(retrain.val_loader, progress="test")

    shape = search.model.input_shape
    search.model.mutator.set_widths("max")
    full = count_flops(search.model, shape)
    pruned = count_flops(retrain.net, shape)
    table = {
        "supernet_mflops": full["flops"] / 1e6,
        "target_mflops": search.model.target_mflops,
        "pruned_mflops": pruned["flops"] / 1e6,
        "pruned_params_m": pruned["params"] / 1e6,
        "pruned_top1": result.get("accuracy/top1"),
        "pruned_top5": result.get("accuracy/top5"),
        "fix_subnet": fix_subnet,
    }
    table["onnx"], onnx_note = _export_onnx(retrain, shape, fix_subnet,
                                            os.path.join(args.work_dir, "pruned.onnx"))
    with open(os.path.join(args.work_dir, "result.json"), "w") as f:
        json.dump(table, f, indent=2)
    rows = [("supernet FLOPs (conv+linear MACs)", f"{table['supernet_mflops']:.2f} M"),
            ("target FLOPs", f"{table['target_mflops']:.2f} M"),
            ("pruned FLOPs", f"{table['pruned_mflops']:.2f} M "
                             f"({100 * table['pruned_mflops'] / table['supernet_mflops']:.1f}%)"),
            ("pruned params", f"{table['pruned_params_m']:.3f} M"),
            ("pruned top-1 (test set)", f"{table['pruned_top1']:.2f} %"),
            ("pruned structure", fix_subnet),
            ("pruned model (ONNX)", onnx_note)]
    w = max(len(r[0]) for r in rows)
    print("\n" + "\n".join(f"| {a:<{w}} | {b} |" for a, b in rows))
    return table
