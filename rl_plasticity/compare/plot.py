"""The comparison figure: one panel per metric on a shared x axis, per learner a line and a band (mean +-1
standard error, or IQM or mean with a bootstrap CI: the --stat summary, named in the legend's title and the
footnote), dashed lines where the physics changed."""

from __future__ import annotations

import io

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from rl_plasticity.compare.summary import SeedSummary  # noqa: E402

LINE_STYLES = ("-", "--", ":")
LEGEND_COLUMNS, LEGEND_ROW = 4, 0.19  # legend entries per row at most; a row's height in inches
FIGURE_WIDTH, CHAR_WIDTH, HANDLE_WIDTH = 7.5, 0.075, 0.6  # inches: a legend label's width is about its
# characters times CHAR_WIDTH (9 pt) plus its line sample and padding
PHYSICS_STYLE = {"color": "0.55", "linestyle": "--", "linewidth": 0.8, "zorder": 0}


def plot_comparison(tables: dict[str, list[dict]], learners: list[str], counts: dict[str, int],
                    changes: dict[str, list[int]], xlabel: str, summary: SeedSummary | None = None,
                    fmt: str = "png") -> bytes:
    """Render the figure and return the file's bytes (written atomically by the caller)."""
    summary = summary or SeedSummary()
    entries = _legend_entries(learners, counts, changes)
    n, legend_height = len(tables), LEGEND_ROW * _legend_rows(entries)
    fig, axes = plt.subplots(n, 1, sharex=True, squeeze=False, figsize=(FIGURE_WIDTH, 2.3 * n + 0.75 + legend_height))
    axes = axes[:, 0]
    for ax, (metric, rows) in zip(axes, tables.items()):
        for i, learner in enumerate(learners):
            mine = [r for r in rows if r["learner"] == learner]
            # A bin only some seeds reached (a run's ragged end, runs still going) would show as a jump.
            full = max((r["n_runs"] for r in mine), default=0)
            mine = [r for r in mine if 2 * r["n_runs"] >= full]
            if not mine:
                continue
            x = [r["bin_end"] for r in mine]
            center = [r[summary.center] for r in mine]
            low, high = np.array([summary.band(r) for r in mine]).T  # NaN where one seed run gives no band
            color, style = line_style(i, len(learners))
            ax.plot(x, center, color=color, linestyle=style, linewidth=1.6, marker="o" if len(x) <= 3 else None,
                    markersize=4, label=_label(learner, counts))
            ax.fill_between(x, low, high, where=~np.isnan(low), color=color, alpha=0.22, linewidth=0)
        for kind, steps in changes.items():
            for j, step in enumerate(steps):
                ax.axvline(step, label=f"{kind} change" if j == 0 else None, **PHYSICS_STYLE)
        ax.set_ylabel(_pretty(metric), fontsize=9)
        ax.spines[["top", "right"]].set_visible(False)
        ax.grid(axis="y", alpha=0.3, linewidth=0.6)
        ax.tick_params(labelsize=8)
    axes[-1].set_xlabel(xlabel)
    axes[-1].xaxis.set_major_formatter(FuncFormatter(_short_number))
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=legend_columns(labels), frameon=False,
               fontsize=9, title=summary.legend_title, title_fontsize=8)
    fig.text(0.99, 0.005, f"{summary.description}\nbins that fewer than half of a learner's seeds reached are left "
             "out (they are in the CSV)", ha="right", va="bottom", fontsize=7, color="0.4")
    height = fig.get_figheight()
    top = 1 - (0.35 + legend_height) / height  # room for the legend's title and rows
    fig.tight_layout(rect=(0, 0.3 / height, 1, top))  # and for the two-line footnote
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=150)
    plt.close(fig)
    return buf.getvalue()


def line_style(i: int, n: int) -> tuple[tuple, str]:
    """Learner i's (colour, line style) among n: tab10 up to 10 learners, tab20 past that (tab10 would repeat
    colours), and past 20 a new line style for each round of colours."""
    colors = plt.get_cmap("tab10" if n <= 10 else "tab20").colors
    return colors[i % len(colors)], LINE_STYLES[i // len(colors) % len(LINE_STYLES)]


def _legend_entries(learners: list[str], counts: dict[str, int], changes: dict[str, list[int]]) -> list[str]:
    return [_label(learner, counts) for learner in learners] + [f"{kind} change" for kind, steps in changes.items()
                                                                if steps]


def _label(learner: str, counts: dict[str, int]) -> str:
    return f"{learner} (n={counts.get(learner, 0)})"


def legend_columns(labels: list[str]) -> int:
    """As many columns (at most LEGEND_COLUMNS) as the longest label lets fit across the figure's width."""
    widest = CHAR_WIDTH * max((len(label) for label in labels), default=0) + HANDLE_WIDTH
    return max(1, min(LEGEND_COLUMNS, len(labels), int(FIGURE_WIDTH / widest)))


def _legend_rows(labels: list[str]) -> int:
    return max(1, -(-len(labels) // legend_columns(labels)))


def _pretty(tag: str) -> str:
    """`plasticity/actor/layer0/dormant_fraction` -> `actor layer0\\ndormant fraction`."""
    parts = tag.split("/")
    if parts[0] in ("charts", "losses"):
        parts = parts[1:]
    elif parts[0] == "plasticity":
        return " ".join(parts[1:-1]) + "\n" + parts[-1].replace("_", " ")
    return "/".join(parts).replace("_", " ")


def _short_number(x: float, _pos=None) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= size:
            return f"{x / size:g}{suffix}"
    return f"{x:g}"
