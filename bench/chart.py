"""Draws figures 1-3 of `make bench` from its JSON results.

    chart.py bench.json bench.png
"""

import json
import sys
import textwrap

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLORS = {"Cairn": "#2b6cb0", "Absurd": "#c05621", "DBOS": "#6b46c1"}
FLOOR = "#718096"


def color(system):
    return COLORS.get(system, FLOOR)


def short(system):
    name = (system.replace(" (floor)", "\n(floor)")
            .replace("raw INSERT+COMMIT from Python", "raw INSERT\n(Python)")
            .replace("raw INSERT+COMMIT", "raw INSERT")
            .replace("INSERT+COMMIT into", "INSERT into")
            .replace("NOTIFY → LISTEN", "NOTIFY→LISTEN"))
    # Narrow enough for the tick labels of six bars side by side not to overlap.
    return "\n".join(textwrap.fill(line, 13, break_long_words=False) for line in name.split("\n"))


def latency_panel(ax, rows, title, log=False):
    names = [short(r["system"]) for r in rows]
    x = range(len(rows))
    p50 = [r["p50"] for r in rows]
    p99 = [r["p99"] for r in rows]
    ax.bar([i - 0.2 for i in x], p50, 0.4, label="p50", color=[color(r["system"]) for r in rows])
    ax.bar([i + 0.2 for i in x], p99, 0.4, label="p99", color=[color(r["system"]) for r in rows],
           alpha=0.45, hatch="//", edgecolor="white")
    for i, (a, b) in enumerate(zip(p50, p99)):
        ax.text(i - 0.2, a, f"{a:.2f}" if a < 10 else f"{a:.0f}", ha="center", va="bottom", fontsize=7)
        ax.text(i + 0.2, b, f"{b:.2f}" if b < 10 else f"{b:.0f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(list(x))
    ax.set_xticklabels(names, fontsize=8)
    ax.set_ylabel("milliseconds")
    if log:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)


def main():
    results = json.load(open(sys.argv[1]))
    panels = [k for k in ("fig1", "fig2", "fig3") if results.get(k)]
    if not panels:
        sys.exit("no figures 1-3 in the results")
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.6))
    if len(panels) == 1:
        axes = [axes]
    for ax, key in zip(axes, panels):
        rows = results[key]
        if key == "fig1":
            latency_panel(ax, rows, "1. per-step checkpoint overhead\n(one run, p50 solid, p99 hatched)", log=True)
        elif key == "fig3":
            latency_panel(ax, rows, "3. suspend → resume, one machine\n(emit → flow's next line)", log=True)
        else:
            names = [short(r["system"]) for r in rows]
            rate = [r["per_second"] for r in rows]
            ax.bar(range(len(rows)), rate, 0.6, color=[color(r["system"]) for r in rows])
            for i, v in enumerate(rate):
                ax.text(i, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)
            ax.set_xticks(range(len(rows)))
            ax.set_xticklabels(names, fontsize=8)
            ax.set_ylabel("steps per second")
            ax.set_title("2. steps/s, 16 runs in parallel", fontsize=10)
    started = dict(results.get("header", [])).get("started", "")
    fig.suptitle(f"Cairn next to the physical limit and its peers ({started}; lower is better "
                 "for 1 and 3, higher for 2)", fontsize=10)
    fig.tight_layout()
    fig.savefig(sys.argv[2], dpi=130)


if __name__ == "__main__":
    main()
