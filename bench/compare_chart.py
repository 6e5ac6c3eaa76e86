"""docs/benchmarks-compare.png: Longtail next to python-socketio, one panel per phase."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI

import matplotlib.pyplot as plt

LONGTAIL = ("long-poll", "sse", "websocket")
SOCKETIO = ("polling", "websocket")
COLOURS = {"longtail": "#2b6cb0", "socketio": "#c05621"}
PANELS = (
    ("held_mib_per_1000", "Memory: MiB of RSS per 1,000 idle connections", "lower is better"),
    ("throughput_per_s", "Throughput: delivered events/s (closed loop)", "higher is better"),
    ("latency_p50_ms", "Latency p50, ms (send start -> receipt)", "lower is better"),
    ("latency_p99_ms", "Latency p99, ms", "lower is better"),
    ("server_cpu_ms_per_event", "Server CPU ms per delivered event", "lower is better"),
    ("fanout_median_ms", "Fan-out: ms until all room members got it (median)", "lower is better"),
)


def label(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def draw(
    results: dict[str, Any],
    path: Path,
    figures: Callable[[dict[str, Any], str], dict[str, float | None]],
) -> None:
    bars = [("longtail", t) for t in LONGTAIL] + [("socketio", t) for t in SOCKETIO]
    values = {bar: figures(results[bar[0]], bar[1]) for bar in bars}
    labels = [f"{'LT' if s == 'longtail' else 'sio'}\n{t}" for s, t in bars]
    colours = [COLOURS[s] for s, _ in bars]
    fig, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    for ax, (metric, title, better) in zip(axes.flat, PANELS, strict=True):
        heights = [values[bar][metric] or 0.0 for bar in bars]
        drawn = ax.bar(range(len(bars)), heights, color=colours)
        for rect, bar in zip(drawn, bars, strict=True):
            text = label(values[bar][metric])
            ax.annotate(
                text,
                (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_xticks(range(len(bars)), labels, fontsize=8)
        ax.set_title(f"{title}\n({better})", fontsize=9)
        ax.margins(y=0.15)
    c = results["config"]
    fig.suptitle(
        f"Longtail (blue) vs python-socketio {results['machine']['python_socketio']} "
        f"(orange), {results['machine']['nproc']} cores, loopback; "
        f"latency at {c['rate_per_s']:g} msg/s, {c['pairs']} pairs; throughput "
        f"{c['senders']} senders; fan-out {c['fanout_members']} members; "
        f"{results['when']} {results['revision']}",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
