"""Command-line entry points behind tools/*.py.  User mistakes (bad config,
missing data, bad JSON) print one clear line and exit 1; --debug shows the
traceback."""
import argparse
import json
import sys

from .config import Config, ConfigError, parse_cfg_options
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


def load_config(path, options=None):
    cfg = Config.fromfile(path)
    if options:
        cfg.merge_from_dict(parse_cfg_options(options))
    return cfg


def _architecture_cfg(cfg):
    model = cfg.get("model")
    if model is None:
        raise UserError(f"{cfg.filename}: no 'model' in the config")
    kind = str(model.get("type", "ImageClassifier")).split(".")[-1]
    return model, kind


def get_flops_main(argv):
    from .algorithm import build_classifier, build_pruned
    from .flops import count_flops, flops_input_shape
    from .units import Mutator, apply_subnet
    p = argparse.ArgumentParser(prog="get_flops.py", description="Conv+linear MACs and parameters "
                                "of a config's model (optionally a pruned structure).")
    p.add_argument("config")
    p.add_argument("--subnet", help="fix-subnet JSON to apply to the supernet")
    p.add_argument("--shape", type=int, nargs="+", help="input H [W]")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--cfg-options", nargs="+", default=[])
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.cfg_options)
    shape = flops_input_shape(cfg, args.shape)
    model_cfg, kind = _architecture_cfg(cfg)
    if kind in ("DMCP", "DMCPDDP"):
        net = build_classifier(model_cfg["architecture"])
    elif kind == "sub_model":
        net = build_pruned(model_cfg["cfg"], model_cfg["fix_subnet"]) if not args.subnet \
            else build_classifier(model_cfg["cfg"])
    else:
        net = build_classifier(model_cfg)
    if args.subnet:
        pruning = (model_cfg.get("mutator_cfg") or {}).get("pruning_cfg", (0.1, 1.0, 0.05))
        apply_subnet(Mutator(net, pruning), args.subnet)
    r = count_flops(net, shape)
    r["input_shape"] = list(shape)
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
