"""Every method's results on the two supervised streams: the README's tables, docs/methods/results.csv and
docs/methods/summary.png, from the result runs themselves.

    python scripts/method_results.py --regression RUNS --pmnist RUNS [--readme README.md] [--docs docs/methods]

Each RUNS folder holds one run directory per learner, named after its config, made by
`rl-plasticity train configs/regression/<learner>.yaml --seeds 30 --out RUNS/<learner>` (permuted MNIST:
`configs/permuted_mnist/<learner>.yaml --seeds 5`). A finished run gives its `results.json` numbers (mean and
standard error over seeds: regression's first bin and last 200k examples, permuted MNIST's accuracy on tasks 1-10
and 71-80) and the last logged layer-0 dormant fraction and step-size statistics (the mean over seeds in
`tb/mean`); an unfinished one is listed with the last checkpoint it reached. The README's tables sit between
`<!-- results:NAME -->` and `<!-- /results:NAME -->` markers and are replaced in place.
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter
import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from rl_plasticity.run.checkpoint import list_checkpoints  # noqa: E402
from rl_plasticity.run.stats import format_mean_se  # noqa: E402
from rl_plasticity.run.tblog import read_scalars  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LAYER0 = "plasticity/net/layer0/"
STEP_SIZE_TAG = re.compile(r"^plasticity/net/layer(\d+)/step_size_(q50|collapsed_fraction)$")
# (stream, results.json keys, what they measure, lower is better)
STREAMS = {"regression": ("early", "late", "binned squared error", True),
           "pmnist": ("first", "last", "online accuracy", False)}
STEP_SIZE_LEARNERS = ("bp", "cbp", "idbd", "idbd_cbp", "autostep", "autostep_cbp", "adam", "meta_adam",
                      "meta_adam_cbp")
CSV_FIELDS = ("stream", "learner", "state", "spans", "early_mean", "early_se", "late_mean", "late_se", "seeds",
              "late_dormant_fraction", "late_step_size_q50", "late_step_size_collapsed_fraction")
# The step-size columns hold one number per layer, input layer first, joined by this.
LAYERS_JOIN = " / "


def _last(tags: dict, tag: str) -> float | None:
    points = tags.get(tag)
    return points[-1][1] if points else None


def read_run(stream: str, run: Path) -> dict:
    """One learner's row: its headline numbers if finished, else the last checkpoint it reached."""
    early_key, late_key, _, _ = STREAMS[stream]
    row = {"stream": stream, "learner": run.name}
    results = run / "results.json"
    if not results.is_file():
        reached = list_checkpoints(run)
        return {**row, "state": f"at {reached[-1][0]:,}" if reached else "started"}
    numbers = json.loads(results.read_text())
    mean_logs = run / "tb" / "mean"  # one seed's run has no mean over seeds: no layer statistics then
    tags = read_scalars(mean_logs) if mean_logs.is_dir() else {}
    return {**row, "state": "finished", "seeds": numbers["seeds"], "spans": _spans(stream, numbers),
            "early_mean": numbers[early_key]["mean"], "early_se": numbers[early_key]["se"],
            "late_mean": numbers[late_key]["mean"], "late_se": numbers[late_key]["se"],
            "late_dormant_fraction": _last(tags, LAYER0 + "dormant_fraction"),
            **_last_step_sizes(tags)}


def _spans(stream: str, numbers: dict) -> tuple[str, str]:
    """What the early and late numbers of a run cover, from its own results.json."""
    if stream == "regression":
        examples = numbers["examples"]
        return (f"first {examples / len(numbers['bins']) / 1000:g}k",  # bins: one list of seeds' errors per bin
                f"last {numbers['late_window'] / 1000:g}k of {examples / 1e6:g}M")
    tasks, window = numbers["tasks"], numbers["window"]
    return f"tasks 1-{window}", f"tasks {tasks - window + 1}-{tasks}"


def _last_step_sizes(tags: dict) -> dict:
    """{'late_step_size_q50': '0.0072 / 0.00089', 'late_step_size_collapsed_fraction': '0 / 0.46'}: the last
    logged median and collapsed fraction of each layer's step sizes; empty for optimizers without them."""
    found = sorted((int(m.group(1)), m.group(2), tag) for tag in tags if (m := STEP_SIZE_TAG.match(tag)))
    return {f"late_step_size_{kind}": LAYERS_JOIN.join(f"{_last(tags, tag):.2g}" for _, k, tag in found if k == kind)
            for kind in ("q50", "collapsed_fraction") if found}


def read_stream(stream: str, runs: Path) -> list[dict]:
    if not runs.is_dir():
        raise SystemExit(f"no such folder of {stream} runs: {runs}")
    return [read_run(stream, d) for d in sorted(runs.iterdir()) if (d / "config.yaml").is_file()]


def _pm(row: dict, which: str) -> str:
    return format_mean_se({"mean": row[which + "_mean"], "se": row[which + "_se"], "n": row["seeds"]})


def _number(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


def method_table(rows: list[dict], stream: str) -> str:
    _, _, what, _ = STREAMS[stream]
    done = [r for r in rows if r["state"] == "finished"]
    # The header names the spans most runs measured; a run that measured others says so beside its name.
    spans = Counter(r["spans"] for r in done).most_common(1)[0][0] if done else ("early", "late")
    lines = [f"| learner | {what}, {spans[0]} | {what}, {spans[1]} | late dormant fraction, layer 0 |",
             "|---|---|---|---|"]
    for r in done:
        name = f"`{r['learner']}`" + ("" if r["spans"] == spans else f" ({r['spans'][0]}; {r['spans'][1]})")
        lines.append(f"| {name} | {_pm(r, 'early')} | {_pm(r, 'late')} | {_number(r['late_dormant_fraction'])} |")
    waiting = [f"`{r['learner']}` ({r['state']})" for r in rows if r["state"] != "finished"]
    if waiting:
        lines += ["", "Not finished yet: " + ", ".join(waiting) + "."]
    return "\n".join(lines)


def step_size_table(by_stream: dict[str, list[dict]]) -> str:
    lines = ["| learner | regression, early | regression, late | regression step sizes | permuted MNIST, tasks 1-10 "
             "| tasks 71-80 | permuted MNIST step sizes |", "|---|---|---|---|---|---|---|"]
    for name in STEP_SIZE_LEARNERS:
        cells = []
        for stream, learner in (("regression", name), ("pmnist", f"cpu_{name}")):
            row = next((r for r in by_stream[stream] if r["learner"] == learner), None)
            if row is None or row["state"] != "finished":
                cells += ["queued" if row is None else row["state"], "", ""]
                continue
            sizes = row.get("late_step_size_q50")
            cells += [_pm(row, "early"), _pm(row, "late"),
                      f"{sizes}; {row['late_step_size_collapsed_fraction']}" if sizes else "-"]
        lines.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def replace_block(text: str, name: str, body: str) -> str:
    start, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    if start not in text or end not in text:
        raise SystemExit(f"README has no {start} ... {end} block")
    head, rest = text.split(start, 1)
    return head + start + "\n" + body + "\n" + end + rest.split(end, 1)[1]


def summary_figure(by_stream: dict[str, list[dict]], path: Path) -> None:
    """Per stream, every finished learner's early (hollow) and late (filled) number, mean +- SE, best late first."""
    fig, axes = plt.subplots(1, len(by_stream), figsize=(6 * len(by_stream), 0.5 + 0.28 * max(
        len(rows) for rows in by_stream.values())), squeeze=False)
    for ax, (stream, rows) in zip(axes[0], by_stream.items()):
        _, _, what, lower_better = STREAMS[stream]
        done = sorted((r for r in rows if r["state"] == "finished"), key=lambda r: r["late_mean"],
                      reverse=not lower_better)
        y = range(len(done))
        for which, style in (("early", {"mfc": "white", "color": "0.45"}), ("late", {"color": "C3"})):
            spread = [r[which + "_se"] or 0.0 for r in done]  # one seed: no bar
            ax.errorbar([r[which + "_mean"] for r in done], y, xerr=spread, fmt="o", label=which, capsize=2, **style)
        ax.set_yticks(list(y), [r["learner"] for r in done], fontsize=8)
        ax.invert_yaxis()
        direction = "lower is better" if lower_better else "higher is better"
        ax.set_title(f"{'slowly-changing regression' if stream == 'regression' else 'permuted MNIST (CPU size)'}",
                     fontsize=10)
        ax.set_xlabel(f"{what} ({direction}), mean +- SE over seeds", fontsize=9)
        ax.grid(axis="x", alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--regression", type=Path, required=True, help="folder of regression runs, one per learner")
    parser.add_argument("--pmnist", type=Path, required=True, help="folder of permuted MNIST runs, one per learner")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "methods")
    args = parser.parse_args(argv)
    by_stream = {"regression": read_stream("regression", args.regression),
                 "pmnist": read_stream("pmnist", args.pmnist)}
    text = args.readme.read_text()  # every marker checked before anything is written
    for stream, rows in by_stream.items():
        text = replace_block(text, stream, method_table(rows, stream))
    text = replace_block(text, "step_sizes", step_size_table(by_stream))
    with open(args.docs / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, CSV_FIELDS)
        writer.writeheader()
        writer.writerows({**r, "spans": "; ".join(r.get("spans", ()))} for rows in by_stream.values() for r in rows)
    summary_figure(by_stream, args.docs / "summary.png")
    args.readme.write_text(text)
    print(f"wrote {args.docs / 'results.csv'}, {args.docs / 'summary.png'} and the tables in {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
