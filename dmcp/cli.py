"""Command-line entry points behind tools/*.py (export.py's is in export.py):
each ``*_main(argv)`` returns an exit code.  User mistakes (bad config, missing
data, bad JSON) print one clear line and exit 1; --debug shows the traceback."""
import argparse
import json
import os
import sys

import numpy as np

from .config import ConfigError, load_config, strip_scope
from .units import UserError


def run(main, argv=None):
    """Call main(args); turn user errors into one message and exit status 1."""
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        return main([a for a in argv if a != "--debug"]) or 0
    except (UserError, ConfigError) as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def get_flops_main(argv):
    from .algorithm import Structure, supernet_of
    from .flops import count_flops, flops_input_shape
    p = argparse.ArgumentParser(prog="get_flops.py", description="Conv+linear MACs and parameters "
                                "of a config's model (optionally a pruned structure).")
    p.add_argument("config")
    p.add_argument("--subnet", help="fix-subnet JSON to apply to the supernet (default: the "
                   "config's model.fix_subnet, of a sub_model or DMCP dict)")
    p.add_argument("--divisor", type=int, help="round every width to a multiple of N first")
    p.add_argument("--shape", type=int, nargs="+", help="input H [W]")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--cfg-options", nargs="+", default=[])
    args = p.parse_args(argv)
    if args.divisor is not None and args.divisor < 1:
        raise UserError(f"--divisor {args.divisor}: must be a positive integer")
    cfg = load_config(args.config, args.cfg_options)
    shape = flops_input_shape(cfg, args.shape)
    arch_cfg, own_subnet, rounding = supernet_of(cfg)
    st = Structure(arch_cfg, args.subnet if args.subnet is not None else own_subnet, shape,
                   rounding, args.divisor)
    net = st.supernet
    r = count_flops(net, shape)
    r["input_shape"] = list(shape)
    if args.divisor is not None:
        r["mflops_before_divisor"] = st.mflops_given
        if not args.json:
            print(f"divisor {args.divisor}: {st.mflops_given:.2f} -> {st.mflops:.2f} MFLOPs")
    if args.json:
        print(json.dumps(r))
        return 0
    print(f"{'layer':<40} {'type':<7} {'in':>5} {'out':>5} {'kernel':>6} {'output':>9} "
          f"{'MFLOPs':>9} {'params':>9}")
    for row in r["layers"]:
        k = "x".join(map(str, row["kernel"])) if row["kernel"] else "-"
        o = "x".join(map(str, row["out_size"])) if row["out_size"] else "-"
        print(f"{row['name']:<40} {row['type']:<7} {row['in_channels']:>5} {row['out_channels']:>5} "
              f"{k:>6} {o:>9} {row['flops'] / 1e6:>9.3f} {row['params']:>9}")
    print(f"\ninput {'x'.join(map(str, shape))}: FLOPs (conv+linear MACs) {r['flops'] / 1e6:.2f} M "
          f"= {r['flops'] / 1e9:.3f} G, params {r['params'] / 1e6:.3f} M")
    return 0


def sample_main(argv):
    """tools/sample_subnets.py: sample subnets again from a supernet checkpoint."""
    from . import algorithm
    from .checkpoint import read_checkpoint
    from .runner import Logger, config_seed, subnet_hook_of, write_samples
    p = argparse.ArgumentParser(prog="sample_subnets.py", description="Sample pruned structures "
                                "(subnet_*.json, expected_ch.json, charts) from a DMCP supernet "
                                "checkpoint, for its target or another.")
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("--num", type=int, default=None, help="direct samples (default: the config's "
                   "DMCPSubnetHook subnet_sample_num, else 10)")
    p.add_argument("--target", type=float, default=None, help="target MFLOPs (default: the "
                   "config's target_flops)")
    p.add_argument("--max-draws", type=int, default=2000)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--work-dir", help="where model_sample/ goes (default: beside the checkpoint)")
    p.add_argument("--cfg-options", nargs="+", default=[])
    args = p.parse_args(argv)
    if args.num is not None and args.num < 1:
        raise UserError(f"--num {args.num}: must be at least 1")
    if args.target is not None and not args.target > 0:
        raise UserError(f"--target {args.target}: must be a positive number of MFLOPs")
    if args.max_draws < 1:
        raise UserError(f"--max-draws {args.max_draws}: must be at least 1")
    cfg = load_config(args.config, args.cfg_options)
    seed = args.seed if args.seed is not None else config_seed(cfg)
    mcfg = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    mtype = strip_scope(mcfg.get("type", ""))
    if mtype not in ("DMCP", "DMCPDDP") or algorithm.pruned_subnet(mcfg) is not None:
        got = "model.fix_subnet makes it a pruned subnet" if mtype in ("DMCP", "DMCPDDP") \
            else f"got {mtype!r}"
        raise UserError(f"{args.config}: sampling needs a DMCP supernet config (model.type='DMCP', "
                        f"{got})")
    model = algorithm.build_algorithm_model(cfg["model"], seed=seed)
    from .flops import flops_input_shape
    model.input_shape = flops_input_shape(cfg)
    state = read_checkpoint(args.checkpoint)
    if not any(k.startswith("mutator.") for k in state):
        raise UserError(f"{args.checkpoint}: holds no architecture parameters (mutator.*.alpha); "
                        f"is it a supernet checkpoint?")
    model.load_state_dict(state)
    hook = subnet_hook_of(cfg)
    num = args.num if args.num is not None else (hook["num"] if hook else 10)
    work_dir = args.work_dir or os.path.dirname(os.path.abspath(args.checkpoint))
    log = Logger(work_dir)
    samples = algorithm.sample_subnets(model, num, np.random.default_rng(seed + 7), args.max_draws,
                                       target_mflops=args.target)
    write_samples(model, samples, os.path.join(work_dir, "model_sample"), log, args.max_draws)
    log.close()
    return 0


def train_main(argv):
    from .runner import Runner
    p = argparse.ArgumentParser(prog="train.py", description="Train a DMCP supernet, a pruned "
                                "sub_model or a plain classifier from a config.")
    p.add_argument("config")
    p.add_argument("--work-dir")
    p.add_argument("--cfg-options", nargs="+", default=[])
    p.add_argument("--resume", nargs="?", const="auto", default=None)
    p.add_argument("--launcher", choices=["none", "mpi", "slurm"], default="none")
    p.add_argument("--auto-scale-lr", action="store_true",
                   help="scale learning rates by (ranks x batch size) / auto_scale_lr.base_batch_size")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    if args.auto_scale_lr:
        if not isinstance(cfg.get("auto_scale_lr"), dict) or "base_batch_size" not in cfg["auto_scale_lr"]:
            raise UserError(f"--auto-scale-lr: {args.config} has no auto_scale_lr = "
                            f"dict(base_batch_size=N) to scale from")
        cfg["auto_scale_lr"]["enable"] = True
    try:
        runner = Runner(cfg, work_dir=args.work_dir, resume=args.resume, launcher=args.launcher)
        runner.train()
    except BaseException as e:
        from . import dist
        dist.abort_on_error(e)          # a distributed run ends on every rank, with a message
        raise
    return 0


def test_main(argv):
    from .runner import Runner
    p = argparse.ArgumentParser(prog="test.py", description="Top-1/top-5 of a checkpoint on the "
                                "config's test (or val) set.")
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("--work-dir")
    p.add_argument("--cfg-options", nargs="+", default=[])
    p.add_argument("--launcher", choices=["none", "mpi", "slurm"], default="none")
    p.add_argument("--width", choices=["max", "min"], default="max",
                   help="a DMCP supernet checkpoint: the width to evaluate (max)")
    p.add_argument("--subnet", help="a DMCP supernet checkpoint: evaluate this fix-subnet JSON")
    p.add_argument("--out", help="also write the metrics to this JSON file")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    if cfg.get("test_dataloader"):
        cfg["val_dataloader"] = cfg["test_dataloader"]
    from .algorithm import pruned_subnet
    from .checkpoint import embedded_subnet
    own = embedded_subnet(args.checkpoint)
    if own is not None and pruned_subnet(cfg["model"]) is not None:
        cfg["model"]["fix_subnet"] = own        # an exported slim checkpoint carries its structure
    if not os.path.exists(args.checkpoint):
        raise UserError(f"checkpoint '{args.checkpoint}' does not exist")
    try:
        runner = Runner(cfg, work_dir=args.work_dir, resume=False, launcher=args.launcher)
        from .checkpoint import read_checkpoint
        runner.model.load_state_dict(read_checkpoint(args.checkpoint))
        evaluated = _test_width(runner, args)
        r = runner.evaluate(progress="test")
    except BaseException as e:
        from . import dist
        dist.abort_on_error(e)
        raise
    runner.log.info(f"Tested {evaluated}")
    runner.log.info("Test: " + "  ".join(f"{k}: {v:.2f}" for k, v in r.items()))
    runner.log.scalar(dict(mode="test", checkpoint=os.path.abspath(args.checkpoint),
                           evaluated=evaluated, **r))
    if args.out and runner.is_main:
        from .export import write_atomic
        record = dict(config=os.path.abspath(args.config),
                      checkpoint=os.path.abspath(args.checkpoint), evaluated=evaluated, metrics=r)
        write_atomic(args.out, (json.dumps(record, indent=2) + "\n").encode())
    return 0


def _test_width(runner, args):
    """A DMCP supernet is evaluated as validation does: at a width (max, min or
    --subnet) with BN statistics recalibrated on a few training batches.  Returns
    what was evaluated, in words."""
    if not runner.is_dmcp:
        if args.subnet or args.width != "max":
            raise UserError("--width and --subnet apply to a DMCP supernet checkpoint; "
                            "this config's model is not one")
        return "the config's network"
    mut = runner.model.mutator
    if args.subnet:
        from .units import apply_subnet
        apply_subnet(mut, args.subnet)
        what = f"supernet at {args.subnet}"
    else:
        mut.set_widths(args.width)
        what = f"supernet at {args.width} width"
    from .checkpoint import trained_epochs
    epochs = trained_epochs(args.checkpoint)
    if epochs:       # the batches the validation after that epoch recalibrated on
        runner.train_loader.set_epoch(epochs - 1)
    runner.recalibrate_bn()
    return f"{what}, BN recalibrated on 5 training batches as validation does"


# ---------------------------------------------------------------- tools/pipeline.py

DEFAULT_SUPERNET = "configs/dmcp_resnet20_fmnist_supernet.py"
DEFAULT_SUBNET = "configs/dmcp_resnet20_fmnist_subnet.py"


def _config_path(name):
    """Shipped configs resolve from the checkout or from the current folder."""
    if os.path.exists(name):
        return name
    here = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), name)
    return here if os.path.exists(here) else name


def _export_onnx(retrain, shape, fix_subnet, flops, path):
    """The retrained pruned net as ONNX (BN folded) when the export extra is
    installed: (path or None, the table's note)."""
    from .export import import_onnx, onnx_metadata, to_onnx, write_atomic
    try:
        import_onnx()
    except UserError:
        retrain.log.info("ONNX export skipped: pip install 'dmcp[export]' to get "
                         "work_dirs/.../pruned.onnx (or run tools/export.py later)")
        return None, "not written: pip install 'dmcp[export]'"
    retrain.net.eval()
    with open(fix_subnet, encoding="utf-8") as f:
        structure = json.load(f)
    meta = onnx_metadata(retrain.cfg, structure, shape, flops)
    data = to_onnx(retrain.net, shape, metadata=meta).SerializeToString()
    write_atomic(path, data)
    retrain.log.info(f"Exported the pruned net: {path} ({len(data) / 1e6:.2f} MB)")
    return path, f"{path} ({len(data) / 1e6:.2f} MB)"


def pipeline_main(argv):
    """tools/pipeline.py: the default main job, DMCP search, retraining of the sampled
    pruned net and evaluation, ending with a result table (and result.json, pruned.onnx)."""
    from .flops import count_flops
    from .runner import Runner
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
    table["onnx"], onnx_note = _export_onnx(retrain, shape, fix_subnet, pruned["flops"],
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
    return 0
