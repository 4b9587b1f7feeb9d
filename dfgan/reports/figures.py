"""The report's figures (seaborn): metric curves with seed bands, final metric with intervals per variant,
quality vs size vs throughput, factorial effects, and paired rows' curves side by side (one panel per claim)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from dfgan.metrics.names import arrow  # noqa: E402
from dfgan.reports.stats import mean_intervals  # noqa: E402

DPI = 150


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


def final_points(cells: pd.DataFrame, metric: str, order: list[str], path: Path) -> Path:
    """Final ``metric`` per variant: each seed as a dot, the mean with its 95% Student-t interval over seeds
    (``stats.mean_intervals``; none with one seed)."""
    col = f"metrics.{metric}"
    d = cells.dropna(subset=[col])
    order = [o for o in order if o in set(d["variant"])]
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(order) + 1.5))
    state = np.random.get_state()  # seaborn jitters with numpy's global generator: fixed, so that every export
    np.random.seed(0)              # of the same runs draws the same figure (a committed report diffs cleanly)
    sns.stripplot(data=d, x=col, y="variant", order=order, color="0.55", size=5, jitter=0.15, ax=ax)
    np.random.set_state(state)
    for i, r in mean_intervals(d, col, order).iterrows():
        if r["n"] >= 2:
            ax.errorbar(r["mean"], i, xerr=[[r["mean"] - r["lo"]], [r["hi"] - r["mean"]]], fmt="D", color="C0",
                        capsize=4, zorder=3)
        else:
            ax.plot(r["mean"], i, "D", color="C0", zorder=3)
        ax.annotate(f"n={int(r['n'])}", (1.0, i), xycoords=("axes fraction", "data"), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=8)
    ax.set(xlabel=f"final {metric}{arrow(metric)}", ylabel="")
    ax.set_title(f"final {metric}: seeds (dots), mean with 95% t interval over seeds\n"
                 "(of each row's mean; the paired differences' intervals are in the tables)", fontsize=9)
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
    title = "factorial effects, 95% CI (pure error)" if finite else "factorial effects (no replication: no intervals)"
    ax.set(xlabel=f"effect on {metric}{arrow(metric)} (first level - second)", title=title)
    return _save(fig, path)


def paired_curves(panels: list[tuple[str, str, str, str]], history: pd.DataFrame, path: Path,
                  title: str = "claims: metric at each evaluation, mean over seeds with 95% t interval") -> Path:
    """One panel per (title, metric, paper row, arm row): the metric at each evaluation step of both rows, mean
    over seeds with its 95% t interval (a step with one seed: the point alone). ``history``: long table
    (variant, seed, metric, step, value). A row with no run yet (a study part-way through) is left out."""
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(4 * max(1, len(panels)), 3.6), squeeze=False)
    for ax, (name, metric, paper, arm) in zip(axes[0], panels, strict=False):
        h = history[history["metric"] == metric]
        for row, colour in ((paper, "C0"), (arm, "C3")):
            rows = h[h["variant"] == row]
            if rows.empty:
                continue
            st = mean_intervals(rows, "value", sorted(rows["step"].unique()), by="step")
            ax.plot(st["step"], st["mean"], "o-", color=colour, label=row)
            ax.fill_between(st["step"], st["lo"].fillna(st["mean"]), st["hi"].fillna(st["mean"]), color=colour,
                            alpha=0.2)
        ax.set(title=name, xlabel="training step", ylabel=f"{metric}{arrow(metric)}")
        ax.legend(fontsize="small")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
