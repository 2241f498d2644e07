"""Command-line entry points behind tools/*.py.  User mistakes (bad config,
missing data, bad JSON) print one clear line and exit 1; --debug shows the
traceback."""
import argparse
import json
import sys

from .config import Config, ConfigError, check_option_keys, parse_cfg_options
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
        options = parse_cfg_options(options)
        check_option_keys(cfg, options)
        cfg.merge_from_dict(options)
    return cfg


def get_flops_main(argv):
    from .algorithm import Structure, supernet_of
    from .flops import count_flops, flops_input_shape
    p = argparse.ArgumentParser(prog="get_flops.py", description="Conv+linear MACs and parameters "
                                "of a config's model (optionally a pruned structure).")
    p.add_argument("config")
    p.add_argument("--subnet", help="fix-subnet JSON to apply to the supernet (default: a "
                   "sub_model config's fix_subnet)")
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
