"""PNG figures of a multi-seed comparison (``tools/analysis/compare.py``), drawn with matplotlib.

- :func:`metrics_png`: per metric, every run of every variant as a dot with the variant's mean and
  standard deviation (top row), and every paired difference to the baseline as a dot with the
  mean difference and its confidence interval (bottom row).
- :func:`learning_curves_png`: training loss and validation mAP against the iteration, one colour
  per variant, a thin line per run and a thick one for the mean over the variant's runs.
"""
import io
from typing import Dict, List

import numpy as np
from matplotlib.figure import Figure

# Dots of one variant spread sideways by seed so that equal values stay visible.
JITTER = 0.12


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format='png', dpi=110, bbox_inches='tight')
    return buffer.getvalue()


def _colors(count: int) -> list:
    from matplotlib import colormaps
    palette = colormaps['tab10'].colors
    return [palette[i % len(palette)] for i in range(count)]


def _offsets(count: int) -> np.ndarray:
    return np.linspace(-JITTER, JITTER, count) if count > 1 else np.zeros(1)


def _variant_axis(axes, names: List[str]) -> None:
    axes.set_xticks(range(len(names)))
    axes.set_xticklabels(names, rotation=25, ha='right')
    axes.set_xlim(-0.6, len(names) - 0.4)
    axes.grid(axis='y', alpha=0.3)


def metrics_png(report: dict) -> bytes:
    """The figure of a report of ``compare.py`` (its ``variants``, ``metrics``, ``confidence``
    and ``sweep``) as PNG bytes."""
    variants = report['variants']
    labels = list(report['metrics'])
    names = [v['name'] for v in variants]
    seeds = report['sweep']['seeds']
    offsets = dict(zip(seeds, _offsets(len(seeds))))
    colors = _colors(len(variants))
    figure = Figure(figsize=(max(10.0, 1.3 * len(variants) * len(labels)), 7.5),
                    layout='constrained')
    grid = figure.subplots(2, len(labels), squeeze=False, sharex=True)
    for column, label in enumerate(labels):
        top, bottom = grid[0][column], grid[1][column]
        for x, (variant, color) in enumerate(zip(variants, colors)):
            _draw_runs(top, x, variant, label, offsets, color)
            if variant['baseline']:
                bottom.text(x, 0.5, 'baseline', transform=bottom.get_xaxis_transform(),
                            ha='center', color=color)
            else:
                _draw_difference(bottom, x, variant['difference'][label], offsets, color)
        top.set_title(label)
        top.set_ylabel(f'{label} (dot: run; bar: mean ± std)' if column == 0 else '')
        bottom.axhline(0.0, color='black', linewidth=0.8)
        bottom.set_ylabel(f'variant - {report["sweep"]["baseline"]}\n(dot: seed; bar: mean, '
                          f'{100 * report["confidence"]:g}% CI)' if column == 0 else '')
        _variant_axis(top, names)
        _variant_axis(bottom, names)
    figure.suptitle(f'{report["sweep"]["name"]}: {len(seeds)} seeds per variant')
    return _png(figure)


def _draw_runs(axes, x: int, variant: dict, label: str, offsets: dict, color) -> None:
    runs = variant['runs']
    values = [r['metrics'][label] for r in runs]
    axes.scatter([x + offsets[r['seed']] for r in runs], values, color=color, s=28, zorder=3)
    summary = variant['summary'][label]
    if summary['mean'] is None:
        return
    axes.hlines(summary['mean'], x - 0.3, x + 0.3, color=color, linewidth=2.5)
    if summary['std'] is not None:
        axes.errorbar(x + 0.25, summary['mean'], yerr=summary['std'], color=color, capsize=4)


def _draw_difference(axes, x: int, diff, offsets: dict, color) -> None:
    if not diff:
        return
    axes.scatter([x + offsets[s] for s in diff['seeds']], diff['differences'], color=color,
                 s=28, zorder=3)
    axes.hlines(diff['mean'], x - 0.3, x + 0.3, color=color, linewidth=2.5)
    if diff['ci_low'] is not None:
        axes.errorbar(x + 0.25, diff['mean'],
                      yerr=[[diff['mean'] - diff['ci_low']], [diff['ci_high'] - diff['mean']]],
                      color=color, capsize=4)


def learning_curves_png(curves: Dict[str, Dict[int, dict]], names: List[str]) -> bytes:
    """Learning curves as PNG bytes.

    Args:
        curves (dict): variant name -> seed -> ``dict(loss=[(step, loss, epoch)],
            val=[(step, mAP)])`` (``compare.read_curves``).
        names (list[str]): The variants in the order of the legend.
    """
    figure = Figure(figsize=(13.0, 5.0), layout='constrained')
    loss_axes, val_axes = figure.subplots(1, 2)
    for name, color in zip(names, _colors(len(names))):
        runs = curves.get(name, {})
        _draw_curves(loss_axes, [[p[:2] for p in r['loss']] for r in runs.values()], color, name)
        _draw_curves(val_axes, [r['val'] for r in runs.values()], color, name, marker='o')
    loss_axes.set(title='training loss (thin: run, thick: mean over seeds)', xlabel='iteration',
                  ylabel='loss')
    val_axes.set(title='validation mAP', xlabel='iteration', ylabel='mAP')
    for axes in (loss_axes, val_axes):
        axes.grid(alpha=0.3)
    if val_axes.get_legend_handles_labels()[0]:
        val_axes.legend(loc='lower right', fontsize='small')
    return _png(figure)


def _draw_curves(axes, series: List[list], color, name: str, marker=None) -> None:
    series = [s for s in series if s]
    for points in series:
        steps, values = zip(*points)
        axes.plot(steps, values, color=color, alpha=0.35, linewidth=0.9, marker=marker,
                  markersize=3)
    if not series:
        return
    common = sorted(set.intersection(*(set(step for step, _ in s) for s in series)))
    means = [np.mean([dict(s)[step] for s in series]) for step in common]
    axes.plot(common, means, color=color, linewidth=2.2, marker=marker, label=name)
