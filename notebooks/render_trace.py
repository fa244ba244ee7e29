#!/usr/bin/python3
"""Render a Chrome trace (from `loom simulate --trace` or a measured `loom execute --trace`) to a
PNG timeline: one row per (rank, stream) that has events, time on the x axis, colour by event kind.

    /usr/bin/python3 notebooks/render_trace.py trace.json -o timeline.png [--window 0 2.5] [--title T]
        [--streams compute,dp,pp] [--width 14] [--row-height 0.28]

Event names follow sim/trace_names.hpp: "F mb3 c0", "B mb3 c0", "R mb3 c0", "optimizer",
"tp ...", "dp ...", "pp send ...", "pp recv ...". Needs only matplotlib (Debian python3-matplotlib).
"""
import argparse
import json
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

KINDS = [  # (label, colour, test on the event name)
    ("forward", "#4C72B0", lambda n: n.startswith("F ")),
    ("backward", "#55A868", lambda n: n.startswith("B ")),
    ("recompute", "#8172B3", lambda n: n.startswith("R ")),
    ("optimizer", "#222222", lambda n: n == "optimizer"),
    ("tp collective", "#DD8452", lambda n: n.startswith("tp ")),
    ("dp collective", "#C44E52", lambda n: n.startswith("dp ")),
    ("pp send/recv", "#937860", lambda n: n.startswith("pp ")),
]
STREAMS = ["compute", "tp", "dp", "pp", "dp gather", "pp recv activations", "pp recv gradients"]


def kind_of(name):
    for i, (_, _, test) in enumerate(KINDS):
        if test(name):
            return i
    return None


def load(path):
    with open(path) as f:
        doc = json.load(f)
    events = doc["traceEvents"] if isinstance(doc, dict) else doc
    procs, threads = {}, {}
    spans = defaultdict(lambda: defaultdict(list))  # (pid, tid) -> kind -> [(start, dur)] in seconds
    labels = defaultdict(list)  # (pid, tid) -> [(start, dur, text)] forward/backward micro-batch numbers
    for e in events:
        if e.get("ph") == "M":
            if e["name"] == "process_name":
                procs[e["pid"]] = e["args"]["name"]
            elif e["name"] == "thread_name":
                threads[(e["pid"], e["tid"])] = e["args"]["name"]
        elif e.get("ph") == "X":
            k = kind_of(e["name"])
            if k is None:
                continue
            key = (e["pid"], e["tid"])
            start, dur = e["ts"] * 1e-6, e["dur"] * 1e-6
            spans[key][k].append((start, dur))
            if k <= 2:
                labels[key].append((start, dur, e["name"].split()[1][2:]))
    meta = doc.get("otherData", {}) if isinstance(doc, dict) else {}
    return procs, threads, spans, labels, meta


def draw(ax, path, window=None, title=None, streams=None, end=None):
    """Draw one trace on `ax`; returns (kinds used, rows drawn). `end`: the x limit when
    window is None (default: the trace's last event), so two traces can share a scale."""
    procs, threads, spans, labels, meta = load(path)
    def shown(k):  # a stream filter names a track or its group ("pp" also draws "pp recv ...")
        name = threads.get(k, STREAMS[k[1]] if k[1] < len(STREAMS) else "")
        return streams is None or name in streams or name.split(" ")[0] in streams
    rows = sorted(k for k in spans if shown(k))
    last = max(s + d for per in spans.values() for lst in per.values() for s, d in lst)
    lo, hi = window if window else (0.0, end if end is not None else last)
    for y, key in enumerate(rows):
        for k, lst in spans[key].items():
            ax.broken_barh(lst, (y - 0.4, 0.8), facecolors=KINDS[k][1], edgecolor="none")
        # Micro-batch numbers where a block is wide enough to read.
        min_w = (hi - lo) / 90.0
        for s, d, text in labels[key]:
            if d >= min_w and s + d > lo and s < hi:
                ax.text(s + d / 2, y, text, ha="center", va="center", fontsize=6, color="white")
    names = []
    for pid, tid in rows:
        proc = procs.get(pid, f"rank {pid}").split(" (")[0]
        names.append(f"{proc} {threads.get((pid, tid), STREAMS[tid] if tid < len(STREAMS) else tid)}")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(names, fontsize=7)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.set_xlim(lo, hi)
    ax.set_xlabel("time in the step (s)")
    if title is None:
        title = f"{path}"
        if meta:
            title = (f"{meta.get('generator', 'loom')}: step {meta.get('step_time_s', 0):.4g} s, dp {meta.get('dp')} "
                     f"tp {meta.get('tp')} pp {meta.get('pp')} vpp {meta.get('vpp')}")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return {k for key in rows for k in spans[key]}, len(rows)


def trace_end(path):
    _, _, spans, _, _ = load(path)
    return max(s + d for per in spans.values() for lst in per.values() for s, d in lst)


def legend(fig, used, fig_h):
    used = sorted(used)
    fig.legend(handles=[Patch(color=KINDS[k][1], label=KINDS[k][0]) for k in used], loc="lower center",
               ncol=len(used), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.35 / fig_h, 1, 1))  # keep 0.35 inch at the bottom for the legend


def render(path, out, window=None, title=None, row_height=0.28, width=14.0, streams=None):
    _, _, spans, _, _ = load(path)
    n = len(spans)
    fig_h = max(2.5, 1.2 + row_height * n)
    fig, ax = plt.subplots(figsize=(width, fig_h))
    used, _ = draw(ax, path, window, title, streams)
    legend(fig, used, fig_h)
    fig.savefig(out, dpi=130)
    plt.close(fig)


def render_pair(predicted, measured, out, titles=(None, None), row_height=0.28, width=14.0, streams=None):
    """The predicted trace above the measured one, on one time scale (the longer of the two)."""
    rows = [len(load(p)[2]) for p in (predicted, measured)]
    fig_h = max(4.0, 2.0 + row_height * sum(rows))
    fig, axes = plt.subplots(2, 1, figsize=(width, fig_h), gridspec_kw={"height_ratios": [max(1, r) for r in rows]})
    end = max(trace_end(predicted), trace_end(measured))
    used = set()
    for ax, path, title in zip(axes, (predicted, measured), titles):
        u, _ = draw(ax, path, None, title, streams, end=end)
        used |= u
    legend(fig, used, fig_h)
    fig.savefig(out, dpi=130)
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("trace")
    ap.add_argument("-o", "--out", required=True, help="PNG to write")
    ap.add_argument("--window", nargs=2, type=float, metavar=("START_S", "END_S"), help="time range to draw")
    ap.add_argument("--title")
    ap.add_argument("--width", type=float, default=14.0, help="figure width in inches")
    ap.add_argument("--row-height", type=float, default=0.28, help="inches per row")
    ap.add_argument("--streams", help="comma-separated streams to draw (default all): compute,tp,dp,pp")
    a = ap.parse_args()
    streams = set(a.streams.split(",")) if a.streams else None
    render(a.trace, a.out, a.window, a.title, row_height=a.row_height, width=a.width, streams=streams)


if __name__ == "__main__":
    main()
