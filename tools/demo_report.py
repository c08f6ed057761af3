"""The demo's picture: learning curves and stage throughputs from ``summary.json``.

Three panels on matplotlib's Agg canvas (no display needed): fine-tuning dev WER, recognition
head dev WER (fine-tuned vs random-init features), frames/s per stage.
Panels explained: docs/design/demo.md
"""

from __future__ import annotations

import os
from pathlib import Path

from signstream.loaders.fileio import tmp_name

PANELS = ("fine-tuning: dev WER per epoch", "recognition head: dev WER per epoch", "throughput per stage")


def _curve(history: list[dict]) -> tuple[list[int], list[float]]:
    points = [(h["epoch"] + 1, h["dev_wer"]) for h in history if h.get("dev_wer") is not None]
    return [e for e, _ in points], [w for _, w in points]


def write_report(summary: dict, path: str | os.PathLike) -> list[str]:
    """Draw ``summary`` (the demo's ``summary.json``) into a PNG at ``path``, atomically.

    Args:
        summary: needs ``curves`` (``finetune``, ``head``, ``head_random``: lists of
            epoch records with ``epoch`` and ``dev_wer``), ``baseline_dev_wer``,
            ``dev_wer``, ``test_wer`` and ``stages`` (rows with ``stage`` and ``frames_per_s``).
        path: the PNG to write.

    Returns:
        The panel titles, in drawing order.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(13, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    curves, baseline = summary["curves"], summary["baseline_dev_wer"]

    ax = axes[0]
    ax.plot(*_curve(curves["finetune"]), marker="o", label="S3D + linear classifier (dev)")
    ax.axhline(baseline, color="grey", linestyle="--", label=f"baseline: random-init features + head, {baseline:.1f}%")
    ax.set(title=PANELS[0], xlabel="epoch", ylabel="dev WER (%)")

    ax = axes[1]
    ax.plot(*_curve(curves["head"]), label="fine-tuned features")
    ax.plot(*_curve(curves["head_random"]), color="grey", label="random-init features (baseline)")
    ax.axhline(
        summary["dev_wer"],
        color="C0",
        linestyle=":",
        linewidth=1,
        label=f"best: dev {summary['dev_wer']:.1f}%, test {summary['test_wer']:.1f}%",
    )
    ax.set(title=PANELS[1], xlabel="epoch", ylabel="dev WER (%)")
    for ax in axes[:2]:
        ax.set_ylim(0, max(100.0, ax.get_ylim()[1]))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)

    ax = axes[2]
    rows = [r for r in summary["stages"] if r.get("frames_per_s")]
    bars = ax.barh([r["stage"] for r in rows], [r["frames_per_s"] for r in rows], color="C2")
    ax.bar_label(bars, labels=[f"{r['frames_per_s']:,.0f}" for r in rows], fontsize=8, padding=2)
    ax.invert_yaxis()
    ax.set(title=PANELS[2], xlabel="frames/s")
    ax.margins(x=0.2)

    when = summary.get("date", "")
    fig.suptitle(f"signstream demo{' — ' + when if when else ''}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    tmp = tmp_name(path).with_suffix(".png")  # the suffix tells matplotlib the format
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return [a.get_title() for a in axes]
