"""A run folder's report: ``report.md`` with the accuracy tables, and PNG plots of the
training loss, the accuracy per question kind and the ablations (matplotlib, the
``report`` extra; without it the Markdown says the plots were skipped)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mirasol._format import format_rows


def read_metrics(run: str | Path) -> list[dict[str, Any]]:
    path = Path(run) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def accuracy_rows(results: dict[str, dict[str, Any]], chance: dict[str, float]
                  ) -> list[tuple[str, ...]]:
    """Table cells: one row per run (``results``: run name -> :func:`evaluate` output), a
    column per question kind, and the chance level of each kind below."""
    kinds = sorted({k for r in results.values() for k in r["by_kind"]})
    rows = [("run", "accuracy", "exact match", *kinds)]
    for name, r in results.items():
        rows.append((name, f"{r['accuracy']:.1%}", f"{r['exact_match']:.1%}",
                     *(f"{r['by_kind'][k]['accuracy']:.1%}" if k in r["by_kind"] else "-"
                       for k in kinds)))
    overall = sum(chance[k] * results[next(iter(results))]["by_kind"][k]["count"]
                  for k in kinds) / sum(results[next(iter(results))]["by_kind"][k]["count"]
                                        for k in kinds)
    rows.append(("chance", f"{overall:.1%}", f"{overall:.1%}",
                 *(f"{chance[k]:.1%}" for k in kinds)))
    return rows


def _plots(folder: Path, runs: dict[str, Path], results: dict[str, dict[str, Any]],
           chance: dict[str, float]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, run in runs.items():
        steps = [(m["step"], m["loss"]) for m in read_metrics(run) if "loss" in m]
        ax.plot(*zip(*steps), label=name)
    ax.set(xlabel="step", ylabel="training loss", yscale="log", title="training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "loss.png", dpi=120)
    names.append("loss.png")

    full = next(iter(results.values()))
    kinds = sorted(full["by_kind"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(results)
    for i, (name, r) in enumerate(results.items()):
        ax.bar([k + i * width for k in range(len(kinds))],
               [r["by_kind"][k]["accuracy"] for k in kinds], width, label=name)
    for k, kind in enumerate(kinds):
        ax.hlines(chance[kind], k - width / 2, k + 0.8 - width / 2, colors="k",
                  linestyles="dashed", label="chance" if k == 0 else None)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(kinds))], kinds)
    ax.set(ylabel="accuracy (test)", ylim=(0, 1), title="accuracy per question kind")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "accuracy.png", dpi=120)
    names.append("accuracy.png")
    plt.close("all")
    return names


def write_report(folder: str | Path, runs: dict[str, str | Path],
                 results: dict[str, dict[str, Any]], chance: dict[str, float],
                 notes: list[str] = (), tables: dict[str, str] | None = None) -> Path:
    """``report.md`` (+ PNGs) in ``folder``. ``runs``: run name -> run folder (for the
    loss curves); ``results``: run name -> test-split :func:`mirasol.train.evaluate`
    output, the full model first; ``chance``: question kind -> chance accuracy;
    ``tables``: caption -> a further preformatted table, after the accuracy table."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    runs = {name: Path(run) for name, run in runs.items()}
    try:
        plots = _plots(folder, runs, results, chance)
    except ImportError:
        plots = []
    lines = ["# mirasol run report", "",
             "Answer accuracy on held-out clips (closed set: the likeliest of the kind's "
             "answers; exact match: greedy generation equals the answer).", "",
             "```", format_rows(accuracy_rows(results, chance)), "```", ""]
    for caption, table in (tables or {}).items():
        lines += [caption, "", "```", table, "```", ""]
    lines += [f"- {note}" for note in notes]
    if plots:
        lines += [""] + [f"![{p.removesuffix('.png')}]({p})" for p in plots]
    else:
        lines += ["", "(plots skipped: install matplotlib, e.g. `pip install "
                  "'mirasol-kernels[report]'`)"]
    path = folder / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
