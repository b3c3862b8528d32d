"""A model card as labelled lines, for the viewer's card panel, the HTML report and the CLI."""

from __future__ import annotations

from core.models.package import ModelPackage
from core.models.trust import SignerStatus, signer_status

MODE_NAMES = {
    "c": "Centralized, no differential privacy",
    "cdp": "Centralized with DP-SGD",
    "f": "Federated (FedAvg), no differential privacy",
    "fpdp": "Federated, DP-SGD in each hospital",
    "fscdp": "Dopamine: federated, secure aggregation, DP-SGD",
}


def _number(value: float | int | None, unset: str = "-") -> str:
    if value is None:
        return unset
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def signature_status(package: ModelPackage, signer: SignerStatus | None = None) -> str:
    """One line: trusted signer (who), valid signature by an unknown signer, or does not verify.

    Without ``signer`` (core.models.trust.signer_status with the hospital's TrustStore) nobody is
    trusted, so a valid signature reads as an unknown signer: never as more than it proves.
    """
    signer = signer or signer_status(package, None)
    if signer.level == "invalid":
        return "NOT VERIFIED: " + signer.text[0].lower() + signer.text[1:]
    return signer.text


def card_fields(package: ModelPackage, signer: SignerStatus | None = None) -> list[tuple[str, str]]:
    """(label, value) rows describing the package's model card and signature."""
    card = package.card
    private = card.epsilon is not None
    signer = signer or signer_status(package, None)
    rows = [
        ("Signature", signature_status(package, signer)),
        ("Signer fingerprint", signer.signer_fingerprint or "-"),
        ("Model file SHA-256", package.sha256),
        ("Architecture", card.architecture),
        ("Classes", ", ".join(card.classes)),
        ("Training mode", MODE_NAMES.get(card.mode, card.mode)),
        ("Privacy ε (epsilon)", _number(card.epsilon, "none (not differentially private)")
         + ("" if signer.signer_trusted else " (unverified claim)")),
        ("Privacy δ (delta)", _number(card.delta) if private else "-"),
        ("Accountant", (card.accountant or "-").upper() if private else "-"),
        ("Noise multiplier", _number(card.noise_multiplier)),
        ("Max gradient norm", _number(card.max_grad_norm)),
        ("Rounds", _number(card.rounds)),
        ("Hospitals", _number(card.hospitals)),
        ("Training images", _number(sum(card.image_counts.values())) if card.image_counts else "-"),
        ("Input size", f"{card.preprocessing.get('size', '?')} px"),
        ("Created", card.created),
        ("Software version", card.software_version),
    ]
    for name, value in sorted(card.metrics.items()):
        if isinstance(value, int | float) and not isinstance(value, bool):
            rows.append((f"Metric: {name}", _number(value)))
    if card.description:
        rows.append(("Description", card.description))
    return rows
