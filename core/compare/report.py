"""The comparison's figure (accuracy against epsilon, as the Dopamine paper's Figure 1) and HTML report."""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

from core.compare.config import MODES

TITLES = {"c": "C: centralized, no DP", "cdp": "CDP: centralized DP-SGD", "f": "F: federated averaging",
          "fpdp": "FPDP: federated, each hospital DP", "fscdp": "FSCDP: Dopamine (shared noise, secure sum)"}
MARKERS = {"c": "s", "cdp": "o", "f": "D", "fpdp": "^", "fscdp": "*"}
COLOURS = {"c": "#555555", "cdp": "#1f77b4", "f": "#8c564b", "fpdp": "#d62728", "fscdp": "#2ca02c"}


def threat_models(results: dict) -> dict[str, str]:
    """Against whom each mode's epsilon holds, and what it leaves exposed."""
    roles = results.get("data", {}).get("colluders", {})
    m, t = roles.get("threshold", "m"), roles.get("colluders", "t")
    return {
        "c": "All images are pooled in one place and the model is trained without noise: the curator sees every "
             "image and the model itself may reveal patients (no epsilon).",
        "cdp": "All images are pooled in one trusted place; epsilon protects each patient against anyone who sees "
               "the trained model, not against the curator.",
        "f": "Images stay at each hospital, but every update reaches the coordinator in the clear and unnoised: "
             "no epsilon against the coordinator or anyone who sees the model.",
        "fpdp": "Each hospital noises its own update fully, so epsilon holds against the coordinator and every "
                "other hospital; the epsilon shown is the worst hospital's.",
        "fscdp": f"Each hospital adds only its share of the noise and the coordinator sees only the secure sum of at "
                 f"least m = {m} updates: epsilon holds against the coordinator together with up to t = {t} "
                 "colluding hospitals.",
    }


def build_figure(results: dict):
    """A matplotlib Figure: DP modes at their epsilon (log scale) with mean ± sd of test accuracy; C and F
    beside them at epsilon = ∞."""
    import matplotlib
    import matplotlib.ticker
    from matplotlib.figure import Figure

    summary = results.get("summary", {})
    figure = Figure(figsize=(8.0, 5.0), dpi=110, layout="constrained")
    left, right = figure.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [4, 1]})
    delta = results.get("config", {}).get("delta")
    side = {"c": -0.4, "f": 0.4}  # the two modes without DP, side by side at epsilon = infinity
    for mode in MODES:
        entry = summary.get(mode)
        if entry is None:
            continue
        axis, x = (left, entry["epsilon"]) if entry["epsilon"] is not None else (right, side.get(mode, 0.0))
        hollow = mode == "cdp"  # CDP and FSCDP share (q, T, sigma) by default: FSCDP's star shows inside CDP's ring
        axis.errorbar([x], [entry["accuracy"]], yerr=[entry["accuracy_sd"]], fmt=MARKERS[mode],
                      color=COLOURS[mode], markersize=14 if hollow else 9, capsize=4,
                      markerfacecolor="none" if hollow else COLOURS[mode], markeredgewidth=1.8 if hollow else 1,
                      label=f"{TITLES[mode]} ({entry['runs']} run{'' if entry['runs'] == 1 else 's'})")
    left.set_xscale("log")
    left.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda value, _pos: f"{value:g}"))
    left.xaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda value, _pos: f"{value:g}"))
    epsilons = [e["epsilon"] for e in summary.values() if e["epsilon"] is not None]
    if epsilons:
        left.set_xlim(min(epsilons) / 1.6, max(epsilons) * 1.6)
    accuracies = [e["accuracy"] + sign * e["accuracy_sd"] for e in summary.values() for sign in (-1, 1)]
    if accuracies:
        left.set_ylim(max(0.0, min(accuracies) - 0.08), min(1.0, max(accuracies) + 0.08))
    left.set_xlabel(f"ε at δ = {delta:g} ({results.get('config', {}).get('accountant', 'rdp').upper()})")
    left.set_ylabel("test accuracy (mean ± sd over seeds)")
    left.grid(True, which="both", alpha=0.3)
    right.set_xticks([0.0], ["ε = ∞"])
    right.set_xlim(-1, 1)
    right.grid(True, axis="y", alpha=0.3)
    right.set_title("no DP", fontsize=9)
    counts = results.get("data", {}).get("test", {}).get("class_counts") or []
    if sum(counts):
        baseline = max(counts) / sum(counts)  # a model that always answers the commonest class
        for axis in (left, right):
            axis.axhline(baseline, color="#999999", linestyle="--", linewidth=1)
        left.text(left.get_xlim()[0], baseline, " always the commonest class", va="bottom", fontsize=8,
                  color="#777777")
        low, high = left.get_ylim()
        left.set_ylim(min(low, baseline - 0.03), high)
    handles = [h for axis in (left, right) for h in axis.get_legend_handles_labels()[0]]
    labels = [label for axis in (left, right) for label in axis.get_legend_handles_labels()[1]]
    if handles:
        figure.legend(handles, labels, fontsize=8, loc="outside lower center", ncol=2, frameon=False)
    source = results.get("data", {}).get("source", "")
    figure.suptitle(f"Accuracy against privacy, K = {len(results.get('data', {}).get('hospitals', []))} hospitals"
                    f" — {source}", fontsize=10)
    return figure


def render_figure(results: dict) -> bytes:
    buffer = io.BytesIO()
    build_figure(results).savefig(buffer, format="png")
    return buffer.getvalue()


def epsilon_text(value: float | None) -> str:
    return "∞" if value is None or math.isinf(value) else f"{value:.3g}"


def table_rows(results: dict) -> list[dict]:
    """One row per mode, formatted for the report, the CLI and the app."""
    rows = []
    for mode in MODES:
        entry = results.get("summary", {}).get(mode)
        if entry is None:
            continue
        sigma = entry.get("noise_multiplier")
        rows.append({"mode": mode.upper(), "title": TITLES[mode],
                     "accuracy": f"{entry['accuracy']:.3f} ± {entry['accuracy_sd']:.3f}",
                     "kappa": f"{entry['kappa']:.3f} ± {entry['kappa_sd']:.3f}",
                     "epsilon": epsilon_text(entry["epsilon"]), "sigma": "—" if sigma is None else f"{sigma:.3g}",
                     "lr": f"{entry['lr']:g}", "runs": str(entry["runs"]), "seconds": f"{entry['seconds']:.0f}"})
    return rows


COLUMNS = (("mode", "mode"), ("accuracy", "accuracy"), ("kappa", "quadratic κ"), ("epsilon", "ε"),
           ("sigma", "σ"), ("lr", "learning rate"), ("runs", "runs"), ("seconds", "s per run"))


def render_html(results: dict, png: bytes) -> str:
    config = results.get("config", {})
    data = results.get("data", {})
    head = "".join(f"<th>{html.escape(title)}</th>" for _, title in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(row[key])}</td>" for key, _ in COLUMNS) + "</tr>"
                   for row in table_rows(results))
    threats = "".join(f"<li><b>{html.escape(TITLES[m])}</b>: {html.escape(text)}</li>"
                      for m, text in threat_models(results).items() if m in results.get("summary", {}))
    settings = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>"
                       for k, v in config.items())
    hospitals = "".join(f"<tr><td>{html.escape(h['name'])}</td><td>{h['images']}</td>"
                        f"<td>{html.escape(str(h['class_counts']))}</td></tr>" for h in data.get("hospitals", []))
    test = data.get("test", {})
    search = "".join(
        f"<tr><td>{m.upper()}</td><td>" + ", ".join(f"{t['lr']:g}: {t['accuracy']:.3f}" for t in r["trials"])
        + f"</td><td>{r['chosen']:g}</td></tr>" for m, r in results.get("lr_search", {}).items())
    roles = data.get("colluders", {})
    price = (f"<p>FSCDP with K = {roles['hospitals']}, m = {roles['threshold']}, t = {roles['colluders']}: the "
             f"released sum carries K / (m − t) = {roles['variance_factor']:.2f} times the variance CDP adds at the "
             "same ε (each hospital's share must cover the case where only m − t honest shares remain).</p>"
             if roles else "")
    synthetic = ("<p><b>Synthetic images: these accuracies say nothing about clinical performance.</b></p>"
                 if "synthetic" in data.get("source", "") else "")
    notes = "".join(f"<p>{html.escape(n)}</p>" for n in results.get("notes", []))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Dopamine: the five modes compared</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}} td,th{{padding:2px 10px}}
table{{border-collapse:collapse;margin:1em 0}} tr:nth-child(even){{background:#f3f3f3}} th{{text-align:left}}</style>
</head><body><h1>The five training modes compared</h1>
<p>Data: {html.escape(data.get('source', ''))}, split {html.escape(str(data.get('split', '')))} into
{len(data.get('hospitals', []))} hospitals; {test.get('images', 0)} test images.</p>{synthetic}
<img alt="accuracy against epsilon" src="data:image/png;base64,{base64.b64encode(png).decode()}" width="880">
<table><tr>{head}</tr>{body}</table>
<p>ε at δ = {config.get('delta')} with the {str(config.get('accountant', '')).upper()} accountant, the worst
hospital's for FPDP and FSCDP. Every mode ran through the product's own training, aggregation and secure
aggregation code, in one process without HTTPS.</p>{price}
<h2>Against whom each ε holds</h2><ul>{threats}</ul>
<h2>Learning-rate search</h2>{notes}
<table><tr><th>mode</th><th>validation accuracy per candidate</th><th>chosen</th></tr>{search}</table>
<h2>Hospitals</h2><table><tr><th>hospital</th><th>images</th><th>per class</th></tr>{hospitals}
<tr><td>test</td><td>{test.get('images', 0)}</td><td>{html.escape(str(test.get('class_counts', '')))}</td></tr></table>
<h2>Settings</h2><table>{settings}</table>
</body></html>
"""


def write_report(results: dict, folder: Path) -> dict[str, Path]:
    """figure.png and report.html in ``folder``; returns their paths."""
    png = render_figure(results)
    paths = {"figure": Path(folder) / "figure.png", "report": Path(folder) / "report.html"}
    paths["figure"].write_bytes(png)
    paths["report"].write_text(render_html(results, png), encoding="utf-8")
    return paths
