"""The report's figures (seaborn): metric curves with seed bands, final metric with intervals per variant,
quality vs size vs throughput, and factorial effects."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from dfgan.metrics.names import arrow  # noqa: E402

DPI = 150
BOOT_SEED = 0


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def curves(history: pd.DataFrame, metric: str, order: list[str], path: Path) -> Path:
    """``metric`` over training steps, one line per variant, band = ± 1 std over seeds."""
    h = history[history["metric"] == metric]
    fig, ax = plt.subplots(figsize=(7, 4))
    sns.lineplot(data=h, x="step", y="value", hue="variant", hue_order=[o for o in order if o in set(h["variant"])],
                 errorbar="sd", ax=ax)
    ax.set(xlabel="training step", ylabel=f"{metric}{arrow(metric)}",
           title=f"{metric} during training (band: ± 1 std over seeds)")
    ax.legend(fontsize="small", title=None)
    return _save(fig, path)


def final_points(cells: pd.DataFrame, metric: str, order: list[str], path: Path, n_boot: int = 2000) -> Path:
    """Final ``metric`` per variant: each seed as a dot, the mean with a 95% bootstrap interval."""
    col = f"metrics.{metric}"
    d = cells.dropna(subset=[col])
    order = [o for o in order if o in set(d["variant"])]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(order) + 1.5))
    sns.stripplot(data=d, x=col, y="variant", order=order, color="0.55", size=5, jitter=0.15, ax=ax)
    sns.pointplot(data=d, x=col, y="variant", order=order, errorbar=("ci", 95), n_boot=n_boot, seed=BOOT_SEED,
                  linestyle="none", color="C0", markers="D", capsize=0.2, ax=ax)
    ax.set(xlabel=f"final {metric}{arrow(metric)}", ylabel="", title=f"final {metric}: seeds (dots), "
           "mean with 95% bootstrap CI")
    return _save(fig, path)


def tradeoff(summary: pd.DataFrame, metric: str, path: Path) -> Path:
    """Mean ``metric`` (± std) against NoP, coloured by sampling throughput when it is known."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    s = summary.dropna(subset=["nop", "mean"])
    has_speed = "images_per_sec" in s and s["images_per_sec"].notna().any()
    ax.errorbar(s["nop"], s["mean"], yerr=s["std"].fillna(0), fmt="none", ecolor="0.6", capsize=3, zorder=1)
    if has_speed:
        known = s["images_per_sec"].notna()
        ax.scatter(s.loc[~known, "nop"], s.loc[~known, "mean"], s=60, color="0.7", zorder=2,
                   label="no throughput record")
        sc = ax.scatter(s.loc[known, "nop"], s.loc[known, "mean"], c=s.loc[known, "images_per_sec"].astype(float),
                        cmap="viridis", s=60, zorder=3)
        fig.colorbar(sc, ax=ax, label="sampling images/s")
        if (~known).any():
            ax.legend(fontsize="small")
    else:
        ax.scatter(s["nop"], s["mean"], s=60, zorder=2)
    for _, r in s.iterrows():
        ax.annotate(r["variant"], (r["nop"], r["mean"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if len(s) and s["nop"].max() / max(s["nop"].min(), 1) > 20:
        ax.set_xscale("log")
    title = f"{metric} vs parameters" + (" vs throughput" if has_speed else " (no throughput record)")
    ax.set(xlabel="NoP (G + D + heads, trainable)", ylabel=f"mean {metric}{arrow(metric)} (± std)", title=title)
    return _save(fig, path)


def effects(table: pd.DataFrame, metric: str, path: Path) -> Path:
    """Factorial effects with their 95% intervals, main effects first."""
    t = table.iloc[::-1]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(t) + 1.5))
    y = np.arange(len(t))
    err = np.vstack([t["effect"] - t["lo"], t["hi"] - t["effect"]])
    finite = np.isfinite(err).all()
    ax.errorbar(t["effect"], y, xerr=err if finite else None, fmt="o", color="C0", capsize=3)
    ax.axvline(0, color="0.5", lw=0.8)
    ax.set_yticks(y, t["term"])
    ax.set(xlabel=f"effect on {metric}{arrow(metric)} (first level - second)", title="factorial effects, 95% CI")
    return _save(fig, path)
