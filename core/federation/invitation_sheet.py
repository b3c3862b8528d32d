"""A printable page per invited hospital: who invites it, where the coordinator is, and the CA fingerprint
its people compare by phone before joining.

The sheet holds no secret (the invitation file does: its one-time token), so it can be printed, faxed
or mailed separately from the file, which is the point: a fingerprint that travels another way than the
invitation is what catches a swapped invitation.
"""

from __future__ import annotations

import datetime as dt
import html
from pathlib import Path

from core.config import atomic_write_bytes
from core.federation.invitation import Invitation
from core.federation.plan import threat_model_text

_STYLE = """
body { font-family: "DejaVu Sans", Arial, sans-serif; margin: 2.2em; color: #111; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; }
h2 { font-size: 1.1em; margin-top: 1.6em; }
.muted { color: #555; }
.fingerprint { font-family: "DejaVu Sans Mono", "Courier New", monospace; font-size: 1.35em;
               letter-spacing: 0.06em; line-height: 1.6; border: 2px solid #111; padding: 0.6em 1em;
               display: inline-block; }
table { border-collapse: collapse; }
td { padding: 0.15em 1em 0.15em 0; vertical-align: top; }
"""


def fingerprint_rows(fingerprint: str, per_row: int = 4) -> list[str]:
    """The 16 groups of a fingerprint in rows of four: read out one row at a time over the phone."""
    groups = fingerprint.split()
    return [" ".join(groups[i:i + per_row]) for i in range(0, len(groups), per_row)]


def sheet_html(invitation: Invitation, *, invitation_file: str = "") -> str:
    """The sheet for ``invitation`` as a self-contained HTML page (printable; no token inside)."""
    e = html.escape
    plan = invitation.plan
    rows = "<br>".join(e(row) for row in fingerprint_rows(invitation.ca_fingerprint))
    facts = [
        ("Federation", f"{invitation.federation_name} ({invitation.federation_id})"),
        ("Invited hospital", f"{invitation.hospital_name} ({invitation.hospital_id})"),
        ("Coordinator address", invitation.coordinator_url),
        ("Invitation file", invitation_file or "handed over separately"),
        ("Plan hash", invitation.plan_hash),
        ("Rounds, hospitals", f"{plan.rounds} rounds, {plan.hospitals} hospitals"
                              + (f" (a sum needs at least m = {plan.threshold})" if plan.secagg else "")),
        ("Against whom", threat_model_text(plan)),
    ]
    table = "\n".join(f"<tr><td class=muted>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in facts)
    steps = [
        "Install Dopamine. Keep the invitation file private until it is used: it enrolls whoever opens it first.",
        "Open the invitation on the Federation page (or run <code>dopamine join INVITATION --data IMAGES</code>).",
        "<b>Phone the coordinator's site</b> and have them read out the CA fingerprint of this federation. "
        "It must match the fingerprint below, and the one the app shows, group by group. If any group "
        "differs, do not join: someone else made the invitation.",
        "Once every hospital enrolled, compare each hospital's key fingerprint with that hospital, as the app "
        "asks, before confirming the roster.",
    ]
    items = "\n".join(f"<li>{step}</li>" for step in steps)
    printed = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Invitation sheet: {e(invitation.hospital_name)}, {e(invitation.federation_name)}</title>
<style>{_STYLE}</style></head>
<body>
<h1>Invitation to {e(invitation.federation_name)}</h1>
<p class=muted>For {e(invitation.hospital_name)} ({e(invitation.hospital_id)}). This sheet holds no secret.</p>
<h2>CA fingerprint (SHA-256): compare it by phone</h2>
<p class=fingerprint>{rows}</p>
<h2>The federation</h2>
<table>
{table}
</table>
<h2>Before joining</h2>
<ol>
{items}
</ol>
<p class=muted>Written {printed} by Dopamine. Dopamine is decision support, not a medical device.</p>
</body></html>
"""


def write_sheet(path: Path, invitation: Invitation, *, invitation_file: str = "") -> Path:
    atomic_write_bytes(Path(path), sheet_html(invitation, invitation_file=invitation_file).encode("utf-8"))
    return Path(path)
