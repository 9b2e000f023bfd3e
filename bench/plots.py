"""The PNGs of docs/performance.md, drawn from ``bench/results/*.json``.

    .venv/bin/python bench/plots.py [--out docs/img]

One figure per benchmark (every round of baseline and ours, the medians, the target) plus ``summary.png``
(each row's ratio against its target). Latency rows draw the distribution (CDF) of the round whose p99 is the
median one. Needs matplotlib (the ``dev`` extra).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from common import median, ratio_text, results_dir

BASE, OURS, REFERENCE = "#8a8f98", "#2f6fdf", "#d68910"


ORDER = ["amqp_throughput", "amqp_confirms_quorum", "amqp_confirms_classic", "amqp_latency", "amqp_batching",
         "embedded_inprocess", "embedded_socket", "failover_sigkill_ttl2", "failover_sigkill_ttl5",
         "handover_sigterm_ttl5", "membership_view", "membership_lost", "membership_cpu", "frames_fps5",
         "frames_keyframes", "frames_latency", "idle_rss", "idle_cpu"]


def load() -> list[dict[str, Any]]:
    """Every result, in the order of the table (unknown names last)."""
    rows = [json.loads(path.read_text()) for path in results_dir().glob("*.json")]
    return sorted(rows, key=lambda row: (ORDER.index(row["name"]) if row["name"] in ORDER else len(ORDER),
                                         row["name"]))


def _names(row: dict[str, Any]) -> tuple[str, str]:
    base, ours = list(row["runs"])[:2]
    return base, ours


def rates(row: dict[str, Any], out: Path) -> None:
    """Per-round events/s of baseline and ours (dots), medians (bars), and the target line; a bench's further
    same-run reference variants (the recorder's extra queue) are drawn after them, in the reference colour."""
    base_name, ours_name = _names(row)
    references = list(row["runs"])[2:]
    fig, ax = plt.subplots(figsize=(6.4 + 1.6 * len(references), 3.6))
    bars = [(base_name, BASE), (ours_name, OURS), *((name, REFERENCE) for name in references)]
    for x, (name, colour) in enumerate(bars):
        values = [run["rate"] for run in row["runs"][name]]
        middle = median(values)
        ax.bar(x, middle, color=colour, alpha=0.35, width=0.6)
        ax.scatter([x] * len(values), values, color=colour, zorder=3, s=18)
        ax.annotate(f"{middle:,.0f}/s", (x, middle), ha="center", va="bottom", fontsize=9)
    factor = _target_factor(row)
    if factor is not None:
        ax.axhline(factor * row["baseline"], color="#c0392b", linestyle="--", linewidth=1,
                   label=f"target: {factor:g}x baseline")
        ax.legend(loc="upper left", fontsize=8)
    ax.set_xticks(range(len(bars)), [f"baseline ({base_name})", f"ours ({ours_name})",
                                     *(f"reference ({name})" for name in references)])
    ax.set_ylabel("events/s")
    verdict = "met" if row["passed"] else "missed"
    ax.set_title(f"{row['title']}\nratio {ratio_text(row['ratio'])}, {verdict}", fontsize=10)
    _save(fig, out / f"{row['name']}.png")


def latency(row: dict[str, Any], out: Path) -> None:
    """CDF of publish-to-handler latency: the median-p99 round of each variant."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for name in row["runs"]:
        colour = BASE if name in ("raw", "bare") else (OURS if name in ("bus", "paced") else "#d9822b")
        runs = [run for run in row["runs"][name] if run.get("quantiles_ms")]
        if not runs:
            continue
        run = sorted(runs, key=lambda r: r["p99_ms"])[len(runs) // 2]
        points = run["quantiles_ms"]
        ax.plot(points, [i / (len(points) - 1) for i in range(len(points))], color=colour,
                label=f"{name}: p50 {run['p50_ms']:.2f} ms, p99 {run['p99_ms']:.2f} ms")
    ax.axhline(0.99, color="#999", linewidth=0.6, linestyle=":")
    ax.set_xscale("log")
    ax.set_xlabel("publish -> handler (ms, log scale)")
    ax.set_ylabel("fraction of events")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{row['title']}\n{row.get('verdict') or _verdict(row)}", fontsize=10)
    _save(fig, out / f"{row['name']}.png")


def trials(row: dict[str, Any], out: Path) -> None:
    """Failover/handover: every trial's seconds from the signal to the next leader, the ttl and the limit."""
    delays = [run["delay_s"] for run in row["runs"]["trials"]]
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.scatter(range(1, len(delays) + 1), delays, color=OURS, s=18, zorder=3, label="trial")
    ax.axhline(row["baseline"], color=BASE, linewidth=1, label=f"lease ttl {row['baseline']:g} s (baseline)")
    ax.axhline(row["extra"]["limit_s"], color="#c0392b", linestyle="--", linewidth=1,
               label=f"target: max <= {row['extra']['limit_s']:.2f} s")
    ax.set_ylim(0, max(row["baseline"], row["extra"]["limit_s"], *delays) * 1.1)
    ax.set_xlabel("trial")
    ax.set_ylabel("signal -> next leader elected (s)")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{row['title']}\nmax {row['ours']:.3f} s, p50 {row['extra']['p50_s']:.3f} s, "
                 f"{'met' if row['passed'] else 'missed'}", fontsize=10)
    _save(fig, out / f"{row['name']}.png")


def budget(row: dict[str, Any], out: Path) -> None:
    """A figure without a baseline against its budget (the row's baseline); RSS also over time."""
    samples = row["extra"].get("rss_samples_mb") if row["name"] == "idle_rss" else None
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    if samples:
        ax.plot(range(len(samples)), samples, color=OURS, label="VmRSS, sampled every second")
        ax.set_xlabel("seconds into the window")
        ax.set_ylim(0, row["baseline"] * 1.15)
    else:
        ax.bar(0, row["ours"], color=OURS, alpha=0.75, width=0.5)
        ax.annotate(f"{row['ours']:,.3g} {row['unit']}", (0, row["ours"]), ha="center", va="bottom", fontsize=9)
        ax.set_xticks([0], [row["metric"]])
        ax.set_xlim(-1, 1)
    ax.axhline(row["baseline"], color="#c0392b", linestyle="--", linewidth=1,
               label=f"budget {row['baseline']:g} {row['unit']} ({row['target']})")
    ax.set_ylabel(row["unit"])
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"{row['title']}\n{_verdict(row)}", fontsize=10)
    _save(fig, out / f"{row['name']}.png")


def _verdict(row: dict[str, Any]) -> str:
    return f"ratio {ratio_text(row['ratio'])}, {'met' if row['passed'] else 'missed'}"


def summary(rows: list[dict[str, Any]], out: Path) -> None:
    """Each row's ratio to its baseline, against its target (latency: lower is better)."""
    fig, ax = plt.subplots(figsize=(9.0, 0.8 + 0.55 * len(rows)))
    for y, row in enumerate(rows):
        factor = _target_factor(row)
        ax.barh(y, row["ratio"], color=OURS if row["passed"] else "#c0392b", alpha=0.75)
        ax.annotate(f"{ratio_text(row['ratio'])} (target {row['target']})", (row["ratio"], y), va="center", fontsize=8,
                    xytext=(4, 0), textcoords="offset points")
        if factor is not None:
            ax.plot([factor, factor], [y - 0.4, y + 0.4], color="black", linewidth=1.5)
    ax.set_yticks(range(len(rows)), [row["name"] for row in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ticks = [0.1, 0.2, 0.5, 1, 2, 5, 10, 20]
    ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlim(min([0.08, *(row["ratio"] / 2 for row in rows)]), 40)
    ax.set_xlabel("ours / baseline in the same run (log scale; black tick = target)")
    _save(fig, out / "summary.png")


def _target_factor(row: dict[str, Any]) -> float | None:
    text = row["target"].split(",")[0].replace(">=", "").replace("<=", "").strip().rstrip("x")
    try:
        return float(text)
    except ValueError:
        return None


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")


TABLE_START = "<!-- bench-table: written by bench/run_all.py from bench/results; edits here are overwritten -->"
TABLE_END = "<!-- bench-table end -->"


def table(rows: list[dict[str, Any]]) -> str:
    """The figures as the markdown table of docs/performance.md."""
    lines = ["| benchmark | command | baseline (same run) | ours | ratio | target | verdict | plot |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        unit = "/s" if row["unit"].endswith("/s") else f" {row['unit']}"
        ours = f"{row['ours']:,.0f}{unit}" if unit == "/s" else f"{row['ours']:,.2f}{unit}"
        if row["name"] == "amqp_batching":
            ours += f"; p99 {row['extra']['load_p99_ms']:.1f} ms at {row['extra']['load_events_per_s']:,.0f}/s"
        base = f"{row['baseline']:,.0f}{unit}" if unit == "/s" else f"{row['baseline']:,.2f}{unit}"
        command = row["command"].replace(".venv/bin/python ", "")
        lines.append(f"| {row['title']} | `{command}` | {base} | {ours} | {ratio_text(row['ratio'])} | {row['target']} "
                     f"| {'met' if row['passed'] else '**missed**'} | [png](img/{row['name']}.png) |")
    return "\n".join(lines)


def rewrite_table(doc: Path, rows: list[dict[str, Any]]) -> None:
    """Replace the table between the markers of ``doc`` (docs/performance.md) with the current figures; the
    prose around it, which explains them, is the author's."""
    text = doc.read_text()
    start, end = text.find(TABLE_START), text.find(TABLE_END)
    if start < 0 or end < start:
        raise SystemExit(f"{doc} has no {TABLE_START!r} ... {TABLE_END!r} block to rewrite")
    doc.write_text(f"{text[:start]}{TABLE_START}\n{table(rows)}\n{text[end:]}")
    print(f"rewrote the table of {doc}")


def main(out: Path, doc: Path | None = None) -> None:
    """Draw every plot into ``out``; with ``doc``, also rewrite its table (``bench/run_all.py`` does)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = load()
    for row in rows:
        if row["name"].startswith(("failover_", "handover_")):
            trials(row, out)
        elif row["name"].startswith(("membership_", "idle_")):
            budget(row, out)
        elif row["unit"] == "ms":
            latency(row, out)
        else:
            rates(row, out)
        if row["name"] == "amqp_batching":
            paced = {name: runs for name, runs in row["runs"].items() if name.startswith("paced")}
            latency({**row, "name": "amqp_batching_latency", "runs": paced,
                     "title": f"Batched, paced at {row['extra']['load_events_per_s']:,.0f} events/s (3x raw)",
                     "verdict": f"target p99 <= 5 ms: {row['extra']['load_p99_ms']:.2f} ms (median of rounds)"},
                    out)
    summary(rows, out)
    if doc is not None:
        rewrite_table(doc, rows)
    else:
        print(table(rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "img")
    main(parser.parse_args().out)
