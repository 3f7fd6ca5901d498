"""Plots of the benchmarks (matplotlib, headless "Agg" backend: PNG files, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_conv_study(rows: Sequence[dict], path: str, title: str = "") -> None:
    """The seed's plot: seconds per 100 passes against the number of filters C, one line per conv
    type (solid: scratchnets, dashed: torch on the same device, same colour), one panel per
    scratchnets backend. Both axes are logarithmic (C doubles; times span two decades).

    ``rows`` are ``scratchnets.benchmarks.convs`` rows: backend, conv, channels, ours_s, torch_s.
    """
    plt = _pyplot()
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    convs = list(dict.fromkeys(r["conv"] for r in rows))
    colours = dict(zip(convs, plt.get_cmap("tab10").colors, strict=False))
    fig, axes = plt.subplots(
        1, len(backends), figsize=(6 * len(backends), 4.5), squeeze=False, sharey=True
    )
    for ax, backend in zip(axes[0], backends, strict=True):
        torch_device = next(r.get("torch_device", "cpu") for r in rows if r["backend"] == backend)
        for conv in convs:
            mine = sorted(
                (r for r in rows if r["backend"] == backend and r["conv"] == conv),
                key=lambda r: r["channels"],
            )
            channels = [r["channels"] for r in mine]
            ax.plot(channels, [r["ours_s"] for r in mine], "o-", color=colours[conv], label=conv)
            if all(r.get("torch_s") is not None for r in mine):
                torch_times = [r["torch_s"] for r in mine]
                ax.plot(channels, torch_times, "x--", color=colours[conv], alpha=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted({r["channels"] for r in rows}))
        ax.get_xaxis().set_major_formatter(plt.matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("number of filters C (C -> C per layer)")
        ax.set_title(f"scratchnets {backend} (solid) vs torch {torch_device} (dashed)", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("seconds per 100 forward passes")
    axes[0][-1].legend(fontsize=8, loc="upper left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_inference_ratios(results: Sequence[dict], path: str, title: str = "") -> None:
    """Eval-forward time ours / torch per model (bars) at each batch size (groups), one panel per
    resolution; a line at 1 (parity) and at 0.8 (the target). ``results`` are
    ``bench models --inference-only --compare-torch --json`` outputs (one per resolution x batch).
    """
    plt = _pyplot()
    resolutions = sorted({r["args"]["resolution"] for r in results})
    models = list(dict.fromkeys(row["model"] for r in results for row in r["rows"]))
    colours = dict(zip(models, plt.get_cmap("tab10").colors, strict=False))
    fig, axes = plt.subplots(1, len(resolutions), figsize=(5.5 * len(resolutions), 4),
                             squeeze=False, sharey=True)  # fmt: skip
    width = 0.8 / max(1, len(models))
    for ax, resolution in zip(axes[0], resolutions, strict=True):
        runs = sorted((r for r in results if r["args"]["resolution"] == resolution),
                      key=lambda r: r["args"]["batch"])  # fmt: skip
        for k, model in enumerate(models):
            ratios = [next((row["infer_ratio"] for row in r["rows"] if row["model"] == model),
                           float("nan")) for r in runs]  # fmt: skip
            positions = [i + (k - (len(models) - 1) / 2) * width for i in range(len(runs))]
            ax.bar(positions, ratios, width, color=colours[model], label=model)
        ax.axhline(1.0, color="black", linewidth=1)
        ax.axhline(0.8, color="grey", linewidth=1, linestyle="--")
        ax.set_xticks(range(len(runs)))
        ax.set_xticklabels([f"batch {r['args']['batch']}" for r in runs])
        ax.set_title(f"{resolution}x{resolution}: eval forward, ours / torch", fontsize=10)
        ax.grid(True, axis="y", alpha=0.3)
    axes[0][0].set_ylabel("time ratio (below 1: ours faster)")
    axes[0][-1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
