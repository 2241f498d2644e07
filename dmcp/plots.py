"""PNG charts of a search's result (matplotlib, headless)."""
import warnings


def _plt():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        warnings.warn("matplotlib is not installed: charts are not drawn")
        return None


def plot_unit_widths(model, samples, path):
    """Per unit: full width, expected width E[c], and the expected_ch choice."""
    plt = _plt()
    if plt is None:
        return
    units = model.mutator.units
    names = [u.name.replace("backbone.", "") for u in units]
    full = [u.num_channels for u in units]
    expected = [samples["expected_channels"][u.name] for u in units]
    choice = samples["subnets"]["expected_ch"][0]["channel_unit_cfg"]["units"]
    chosen = [choice[u.key]["choice"] for u in units]
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(units) + 2), 4.5))
    xs = range(len(units))
    ax.bar(xs, full, color="#d9d9d9", label="full width")
    ax.bar(xs, chosen, color="#4c72b0", label="kept (expected_ch.json)")
    ax.plot(xs, expected, "o", color="#dd8452", ms=4, label="E[c]")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(names, rotation=90, fontsize=7)
    ax.set_ylabel("channels")
    ax.set_title("DMCP: kept width per channel unit")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_flops_histogram(mflops, target, path):
    plt = _plt()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(mflops, bins=40, color="#4c72b0")
    ax.axvline(target, color="#c44e52", label=f"target {target:.1f} M")
    ax.axvspan(0.95 * target, 1.05 * target, color="#c44e52", alpha=0.15, label="+-5%")
    ax.set_xlabel("MFLOPs (conv + linear MACs)")
    ax.set_ylabel("direct samples")
    ax.set_title("FLOPs of subnets sampled from the Markov chains")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
