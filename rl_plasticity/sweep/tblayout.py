"""A TensorBoard custom-scalars layout for a sweep: one chart per metric with every learner's runs on it.

TensorBoard's default view draws one chart per tag with every run on it, but splits a layer's metric
into one chart per layer and mixes in everything else. The layout gathers, per metric, the matching
tags of all runs (named `learner/seed_k/...` by the sweep's folders) into one chart under
"Custom Scalars". It lives in its own run, `SWEEP_DIR/layout/`, which TensorBoard merges with the rest.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from rl_plasticity.problems import headline

LAYOUT_DIR = "layout"

PLASTICITY_CHARTS = [
    ("dormant fraction", [r"^plasticity/.*/dormant_fraction$"]),
    ("stable rank", [r"^plasticity/.*/stable_rank$"]),
    ("effective rank", [r"^plasticity/.*/effective_rank$"]),
    ("mean |weight|", [r"^plasticity/.*/mean_abs_weight$"]),
    ("weight change", [r"^plasticity/.*/weight_change$"]),
]


def layout_for(problems: list[str]) -> dict:
    """The layout dict `SummaryWriter.add_custom_scalars` takes: {category: {title: ["Multiline", [regex]]}}."""
    learners = {}
    for problem in dict.fromkeys(problems):  # keep order, drop repeats
        for title, regexes in headline(problem).charts:
            learners[title] = ["Multiline", regexes]
    return {"learners compared": learners,
            "plasticity (every net and layer)": {t: ["Multiline", r] for t, r in PLASTICITY_CHARTS}}


def write_layout(sweep_dir: str | Path, problems: list[str]) -> Path:
    """(Re)write `sweep_dir/layout/` holding only the layout; returns that folder."""
    from torch.utils.tensorboard import SummaryWriter

    folder = Path(sweep_dir) / LAYOUT_DIR
    if folder.is_dir():
        shutil.rmtree(folder)  # one layout event only: an old one would be merged with the new
    writer = SummaryWriter(log_dir=str(folder))
    writer.add_custom_scalars(layout_for(problems))
    writer.close()
    return folder
