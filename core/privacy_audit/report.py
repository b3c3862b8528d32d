"""The audit's report: JSON (everything), a PNG (score histograms and the two epsilons) drawn with
Pillow, and a short HTML page that embeds the PNG. Nothing here needs torch."""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np

from core.privacy_audit.audit import MODE_TITLES, AuditResult

_WIDTH, _HEIGHT = 960, 360
_IN, _OUT, _CLAIM, _INK, _GRID = (214, 96, 39), (52, 110, 196), (60, 150, 80), (30, 30, 30), (215, 215, 215)


def result_json(result: AuditResult) -> str:
    return json.dumps(result.to_dict(), indent=2, allow_nan=False)


def render_png(result: AuditResult) -> bytes:
    """Left: the gradient canaries' scores, included against excluded. Right: measured against claimed."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("RGB", (_WIDTH, _HEIGHT), "white")
    draw = ImageDraw.Draw(image)
    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # a Pillow without FreeType
        font = ImageFont.load_default()
    _histogram(draw, font, result, (50, 40, 470, 300))
    _bars(draw, font, result, (640, 40, 880, 300))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _histogram(draw, font, result: AuditResult, box: tuple[int, int, int, int]) -> None:
    left, top, right, bottom = box
    data = result.scores.get("gradient", {})
    scores = np.asarray(data.get("scores", []), dtype=float)
    included = np.asarray(data.get("included", []), dtype=bool)
    draw.text((left, top - 28), "Gradient canaries: release summed along each canary, in units of C", fill=_INK, font=font)
    draw.line([(left, bottom), (right, bottom)], fill=_INK)
    if scores.size == 0:
        return
    low, high = float(scores.min()), float(scores.max())
    if high <= low:
        high = low + 1.0
    edges = np.linspace(low, high, 41)
    counts_in = np.histogram(scores[included], edges)[0]
    counts_out = np.histogram(scores[~included], edges)[0]
    peak = max(1, int(max(counts_in.max(initial=0), counts_out.max(initial=0))))
    width = (right - left) / 40
    for i in range(40):
        x0 = left + i * width
        for counts, colour, inset in ((counts_out, _OUT, 0), (counts_in, _IN, width / 3)):
            h = (bottom - top) * counts[i] / peak
            if h > 0:
                draw.rectangle([x0 + inset, bottom - h, x0 + width - 1, bottom], fill=colour)
    draw.text((left, bottom + 6), f"{low:.3g}", fill=_INK, font=font)
    draw.text((right - 40, bottom + 6), f"{high:.3g}", fill=_INK, font=font)
    draw.rectangle([left, bottom + 30, left + 12, bottom + 42], fill=_IN)
    draw.text((left + 18, bottom + 29), f"included ({int(included.sum())})", fill=_INK, font=font)
    draw.rectangle([left + 170, bottom + 30, left + 182, bottom + 42], fill=_OUT)
    draw.text((left + 188, bottom + 29), f"excluded ({int((~included).sum())})", fill=_INK, font=font)


def _bars(draw, font, result: AuditResult, box: tuple[int, int, int, int]) -> None:
    left, top, right, bottom = box
    rows = [(f"measured ({kind})", bound.epsilon_lower, _IN) for kind, bound in result.bounds.items()]
    rows.append(("guaranteed (accountant)", result.epsilon, _CLAIM))
    cap = max(bound.max_epsilon_lower for bound in result.bounds.values())
    finite = [v for _, v, _ in rows if math.isfinite(v)] + [cap]
    scale_max = max(finite) * 1.15 or 1.0
    draw.text((left - 90, top - 28), f"epsilon at delta = {result.config['delta']:g} ({result.confidence:.0%} confidence)",
              fill=_INK, font=font)
    row_height = (bottom - top) / len(rows)
    for index, (name, value, colour) in enumerate(rows):
        y = top + index * row_height + row_height * 0.25
        length = (right - left) * (min(value, scale_max) / scale_max if math.isfinite(value) else 0.95)
        draw.text((left - 150, y + 4), name, fill=_INK, font=font)
        draw.rectangle([left, y, left + length, y + row_height * 0.5], fill=colour)
        draw.text((left + length + 4, y + 4), "infinite" if math.isinf(value) else f"{value:.3g}", fill=_INK, font=font)
    x = left + (right - left) * cap / scale_max
    for y in range(top, bottom, 8):
        draw.line([(x, y), (x, y + 4)], fill=_INK)
    draw.text((left - 150, bottom + 10), f"dashed: the most this audit could show ({cap:.3g})", fill=_INK, font=font)
    draw.line([(left, top), (left, bottom)], fill=_GRID)


def render_html(result: AuditResult, png: bytes) -> str:
    config = result.config
    rows = "".join(
        f"<tr><td>{html.escape(kind)}</td><td>{b.canaries}</td><td>{b.included}</td><td>{b.guesses}</td>"
        f"<td>{b.correct}</td><td>{b.epsilon_lower:.3g}</td><td>{b.max_epsilon_lower:.3g}</td></tr>"
        for kind, b in result.bounds.items()
    )
    verdict = ("<p class='bad'><b>The measured lower bound is above the accountant's epsilon: the code or the "
               "accounting is wrong.</b></p>" if result.exceeds_claim else "")
    settings = (f"σ = {config['noise_multiplier']:g}, q = {result.sample_rate:.4g}, C = {config['max_grad_norm']:g}, "
                f"{result.steps} {'rounds' if config['mode'] == 'fscdp' else 'steps'}, δ = {config['delta']:g}, "
                f"accountant {config['accountant'].upper()}")
    if config["mode"] == "fscdp":
        settings += f"; K = {config['hospitals']}, m = {config['threshold']}, t = {config['colluders']}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Dopamine privacy audit</title>
<style>body{{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}} td,th{{padding:2px 10px}}
table{{border-collapse:collapse}} tr:nth-child(even){{background:#f3f3f3}} .bad{{color:#b00}}</style></head>
<body><h1>Privacy audit: {html.escape(MODE_TITLES[config['mode']])}</h1>
<p><b>{html.escape(result.summary())}</b></p>{verdict}
<p>Settings: {html.escape(settings)}. Synthetic images only; {result.seconds:.1f} s.</p>
<p>{html.escape(result.threat_model)}</p>
<img alt="canary scores and epsilons" src="data:image/png;base64,{base64.b64encode(png).decode()}" width="{_WIDTH}">
<table><tr><th>canaries</th><th>number</th><th>included</th><th>guesses</th><th>correct</th><th>ε measured</th>
<th>most it could show</th></tr>{rows}</table>
<p>Each canary was included with probability 1/2; the attacker guessed in/out for the canaries with the highest
and lowest scores (Steinke, Nasr and Jagielski 2023, one-run bound; the best of several guess counts, each
tested at a correspondingly stricter level).</p>
<h2>What this can and cannot show</h2><p>{html.escape(result.limits)}</p>
</body></html>
"""


def write_report(result: AuditResult, folder: Path) -> dict[str, Path]:
    """audit.json, audit.png and audit.html in ``folder`` (created); returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    png = render_png(result)
    paths = {"json": folder / "audit.json", "png": folder / "audit.png", "html": folder / "audit.html"}
    paths["json"].write_text(result_json(result) + "\n", encoding="utf-8")
    paths["png"].write_bytes(png)
    paths["html"].write_text(render_html(result, png), encoding="utf-8")
    return paths
