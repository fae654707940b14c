#!/usr/bin/env python3
"""Draws the scale rows of compare.py's JSON as an SVG (three panels: Tower
CPU, Tower RSS and adoption time against the number of shellpers held).
Hand-written SVG, no plotting library.

    plot_scale.py target/bench/compare.json docs/bench-scale.svg
"""
import json
import sys

PANELS = [
    ("cpu_pct", "Tower CPU, % of one core", 1.0, "goal: 500 under 1 %"),
    ("tower_rss_kib", "Tower RSS, MiB", None, ""),
    ("adopt_ms", "adoption after a restart, ms", 1000.0, "goal: 500 under 1 s"),
]
W, H, PAD_L, PAD_B, PAD_T, GAP = 300, 220, 52, 40, 34, 24


def esc(s):
    return s.replace("&", "&amp;").replace("<", "&lt;")


def nice_max(v):
    for m in [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]:
        if v <= m:
            return m
    return v


def panel(x0, rows, key, title, goal, goal_label):
    xs = [r["n"] for r in rows]
    ys = [r[key] / 1024 if key == "tower_rss_kib" else r[key] for r in rows]
    xmax = max(xs)
    ymax = nice_max(max(ys + ([goal] if goal and goal < 2 * max(ys) else [])) * 1.1)
    pw, ph = W - PAD_L - 10, H - PAD_B - PAD_T
    sx = lambda x: x0 + PAD_L + pw * x / xmax
    sy = lambda y: PAD_T + ph - ph * y / ymax
    out = [f'<text x="{x0 + W / 2}" y="18" text-anchor="middle" font-weight="bold">{esc(title)}</text>',
           f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(xmax)}" y2="{sy(0)}" stroke="#000"/>',
           f'<line x1="{sx(0)}" y1="{sy(0)}" x2="{sx(0)}" y2="{sy(ymax)}" stroke="#000"/>']
    for i in range(5):
        y = ymax * i / 4
        out.append(f'<text x="{sx(0) - 4}" y="{sy(y) + 4}" text-anchor="end">{y:g}</text>')
        out.append(f'<line x1="{sx(0)}" y1="{sy(y)}" x2="{sx(xmax)}" y2="{sy(y)}" stroke="#ddd"/>')
    for x in xs:
        out.append(f'<text x="{sx(x)}" y="{sy(0) + 14}" text-anchor="middle">{x}</text>')
    out.append(f'<text x="{x0 + PAD_L + pw / 2}" y="{H - 6}" text-anchor="middle">shellpers held</text>')
    if goal and goal <= ymax:
        out.append(f'<line x1="{sx(0)}" y1="{sy(goal)}" x2="{sx(xmax)}" y2="{sy(goal)}" '
                   f'stroke="#c00" stroke-dasharray="4 3"/>')
        out.append(f'<text x="{sx(xmax)}" y="{sy(goal) - 4}" text-anchor="end" fill="#c00">{esc(goal_label)}</text>')
    pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in zip(xs, ys))
    out.append(f'<polyline points="{pts}" fill="none" stroke="#1f5fa8" stroke-width="2"/>')
    for x, y in zip(xs, ys):
        out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="#1f5fa8"/>')
    return out


def main():
    src, dst = sys.argv[1], sys.argv[2]
    r = json.load(open(src))
    rows = [x for x in r["scale"] + ([r["long"]] if r.get("long") else []) if "error" not in x]
    rows.sort(key=lambda x: x["n"])
    width = len(PANELS) * W + (len(PANELS) - 1) * GAP
    body = []
    for i, (key, title, goal, label) in enumerate(PANELS):
        body += panel(i * (W + GAP), rows, key, title, goal, label)
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{H}" '
           f'viewBox="0 0 {width} {H}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{H}" fill="#fff"/>', *body, "</svg>"]
    with open(dst, "w") as f:
        f.write("\n".join(svg) + "\n")


if __name__ == "__main__":
    main()
