"""Batch results as a CSV file and a self-contained HTML report (no scripts, images inlined as base64)."""

from __future__ import annotations

import base64
import csv
import html
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from core import __version__
from core.inference.card import card_fields
from core.inference.output import write_output

if TYPE_CHECKING:
    from core.inference.batch import BatchResult
    from core.models.package import ModelPackage

# Spreadsheet programs run cells starting with these as formulas (CSV injection): such a cell is
# prefixed with an apostrophe, which they display as text.
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def _cell(text: str) -> str:
    return "'" + text if text.startswith(_FORMULA_PREFIXES) else text


def csv_columns(classes: list[str]) -> list[str]:
    return ["file", "frame", "laterality", "predicted_class", *(f"p_{name}" for name in classes),
            "referable_dr_probability", "model_validation", "model_sha256", "signature_verified",
            "signer_trusted", "signer_fingerprint", "input_warnings", "error"]


def _frame_number(frame: int | None) -> str:
    """Frames are numbered from 1, as DICOM viewers count them; empty for a single image."""
    return "" if frame is None else str(frame + 1)


def csv_text(result: BatchResult) -> str:
    """One row per image (each frame of a multi-frame file has its own): failures keep their row, with
    the reason in ``error``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([_cell(c) for c in csv_columns(result.classes)])
    for item in result.items:
        p = item.prediction
        if p is None:
            probabilities = [""] * len(result.classes)
            row = [item.file, _frame_number(item.frame), "", "", *probabilities, "", result.model_validation,
                   result.model_sha256, result.signature_verified, result.signer_trusted,
                   result.signer_fingerprint, "", item.error]
        else:
            probabilities = [f"{p.probabilities[name]:.6f}" for name in result.classes]
            referable = "" if p.referable_dr_probability is None else f"{p.referable_dr_probability:.6f}"
            warnings = " | ".join(p.input_check.warnings) if p.input_check is not None else ""
            row = [p.file, _frame_number(p.frame), p.laterality or "", p.predicted_class, *probabilities,
                   referable, p.model_validation, p.model_sha256, p.signature_verified, p.signer_trusted,
                   p.signer_fingerprint, warnings, ""]
        writer.writerow([_cell(str(v).lower() if isinstance(v, bool) else str(v)) for v in row])
    return buffer.getvalue()


def write_csv(path: Path, result: BatchResult) -> None:
    write_output(Path(path), csv_text(result).encode("utf-8"))


def _data_uri(jpeg: bytes | None) -> str:
    if not jpeg:
        return ""
    return f'<img alt="" src="data:image/jpeg;base64,{base64.b64encode(jpeg).decode("ascii")}">'


_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#1c2330}
h1{font-size:1.4em} table{border-collapse:collapse;margin:1em 0} td,th{border:1px solid #ccd;padding:4px 8px;
vertical-align:top;text-align:left} th{background:#eef1f6} .warn{background:#fde2e1;border:2px solid #c62828;
padding:0.8em;font-weight:bold;color:#8e1b1b} .caution{background:#fff4d6;border:2px solid #9a6700;
padding:0.8em;font-weight:bold;color:#6b4700} .ok{color:#1b5e20} .bar{background:#dde3ec;width:120px;height:10px;
display:inline-block;margin-right:6px} .bar span{background:#3867d6;height:10px;display:block}
.file{font-family:monospace;word-break:break-all;max-width:28em} .small{color:#5a6475;font-size:0.85em}
.warnword{color:#8e1b1b;font-weight:bold}
"""


def html_text(result: BatchResult, package: ModelPackage) -> str:
    esc = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # Nothing in the report may load or run anything: images are inline data, styles are inline.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
        "style-src 'unsafe-inline'\">",
        f"<title>Dopamine predictions - {esc(Path(result.model_path).name)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Predictions with {esc(Path(result.model_path).name)}</h1>",
    ]
    if not result.signature_verified:
        parts.append('<p class="warn">UNVERIFIED MODEL: its signature does not verify. The file may have been '
                     "changed after signing. Do not use these results for patient care.</p>")
    elif not result.signer_trusted:
        parts.append('<p class="caution">UNKNOWN SIGNER: the signature is valid, but its key '
                     f"({esc(result.signer_fingerprint)}) is not one this hospital trusts, so the model card's "
                     "claims (privacy, training, accuracy) are unverified.</p>")
    else:
        assert result.signer is not None  # signer_trusted needs one
        parts.append(f'<p class="ok">Signed by a trusted signer ({esc(result.signer.signer_described)}).</p>')
    assessment = result.assessment
    if assessment is not None and not assessment.trustworthy:
        parts.append(f'<p class="warn">{esc(assessment.headline.upper())}: {esc(assessment.message)} Every answer '
                     f"below is marked {esc(assessment.marker)}.</p>")
    done, failed = len(result.predictions), len(result.failures)
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    parts.append(f'<p>{done} image(s) predicted, {failed} could not be read. Generated {esc(generated)} by '
                 f"Dopamine {esc(__version__)}. Decision support only: a clinician makes the diagnosis.</p>")
    parts.append("<h2>Model</h2><table>")
    for label, value in card_fields(package, result.signer):
        parts.append(f"<tr><th>{esc(label)}</th><td>{esc(value)}</td></tr>")
    parts.append("</table>")

    if result.predictions:
        dr = any(p.referable_dr_probability is not None for p in result.predictions)
        header = "<tr><th>Image</th><th>Heatmap</th><th>File</th><th>Prediction</th><th>Probabilities</th>"
        parts.append("<h2>Results</h2><table>" + header + ("<th>Referable DR</th>" if dr else "") + "</tr>")
        for item in result.items:
            p = item.prediction
            if p is None:
                continue
            bars = "".join(
                f'<div><span class="bar"><span style="width:{100 * prob:.1f}%"></span></span>'
                f"{esc(name)}: {100 * prob:.1f}%</div>"
                for name, prob in p.probabilities.items()
            )
            method = f'<div class="small">{esc(item.saliency_method)}</div>' if item.saliency_method else ""
            marker = f' <span class="warnword">{esc(p.model_marker)}</span>' if p.model_marker else ""
            notes = "".join(f'<div class="small warnword">{esc(w)}</div>'
                            for w in (p.input_check.warnings if p.input_check is not None else []))
            row = (f"<tr><td>{_data_uri(item.thumbnail_jpeg)}</td><td>{_data_uri(item.heatmap_jpeg)}{method}</td>"
                   f'<td class="file">{esc(p.file)}{_where(p.frame, p.laterality)}{notes}</td>'
                   f"<td><b>{esc(p.predicted_class)}</b>{marker}</td><td>{bars}</td>")
            if dr:
                referable = p.referable_dr_probability or 0.0
                verdict = "Refer" if p.referable_dr else "No referral"
                row += f"<td>{verdict} ({100 * referable:.1f}%){marker}</td>"
            parts.append(row + "</tr>")
        parts.append("</table>")

    if result.failures:
        parts.append("<h2>Files that could not be read</h2><table><tr><th>File</th><th>Reason</th></tr>")
        for item in result.failures:
            parts.append(f'<tr><td class="file">{esc(item.file)}{_where(item.frame, None)}</td>'
                         f'<td>{esc(item.error or "")}</td></tr>')
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _where(frame: int | None, laterality: str | None) -> str:
    """The frame of a series and the eye, under the file name (both only when known)."""
    words = []
    if frame is not None:
        words.append(f"frame {frame + 1}")
    if laterality in ("L", "R"):
        words.append("left eye" if laterality == "L" else "right eye")
    return f'<div class="small">{html.escape(", ".join(words))}</div>' if words else ""


def write_html(path: Path, result: BatchResult, package: ModelPackage) -> None:
    write_output(Path(path), html_text(result, package).encode("utf-8"))
