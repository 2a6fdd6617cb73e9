"""Charts the recipes and reports share (matplotlib, imported when a chart is drawn)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _axes(size: tuple[float, float]) -> tuple[Any, Any]:
    """A figure and its axes, with the file-only backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size)


def _save(fig: Any, ax: Any, path: str | Path, title: str, legend: bool) -> Path:
    """Title, legend, layout; the PNG written to `path` (folders made) and the figure closed."""
    import matplotlib.pyplot as plt

    ax.set_title(title)
    if legend:
        ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def bar_chart(path: str | Path, labels: list[str], series: dict[str, list[tuple[float, float | None]]], title: str,
              ylabel: str | None = None) -> Path:
    """Grouped bars into the PNG `path`: one group per label, one bar per series (value, stderr as an
    error bar, or None)."""
    width = 0.8 / max(1, len(series))
    fig, ax = _axes((max(6.0, 1.2 * len(labels) * max(1, len(series)) ** 0.5), 4.0))
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(xs, [v for v, _ in values], width, yerr=[se or 0.0 for _, se in values], capsize=3, label=name)
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    if ylabel:
        ax.set_ylabel(ylabel)
    return _save(fig, ax, path, title, legend=len(series) > 1)


def histogram(path: str | Path, series: dict[str, list[float]], title: str, bins: int | list[float] = 10,
              xlabel: str | None = None) -> Path:
    """Overlaid histograms of each series' values into the PNG `path`."""
    fig, ax = _axes((6.0, 3.6))
    for name, values in series.items():
        ax.hist(values, bins=bins, alpha=0.6, label=f"{name} ({len(values)})")
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    return _save(fig, ax, path, title, legend=bool(series))
