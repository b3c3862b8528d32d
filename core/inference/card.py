"""A model card as labelled lines, for the viewer's card panel, the HTML report and the CLI."""

from __future__ import annotations

from core.inference.assessment import assess, evaluation_of
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
    rows += evaluation_rows(card)
    for name, value in sorted(card.metrics.items()):
        if isinstance(value, int | float) and not isinstance(value, bool):
            rows.append((f"Metric: {name}", _number(value)))
    if card.description:
        rows.append(("Description", card.description))
    return rows


def evaluation_rows(card) -> list[tuple[str, str]]:
    """The held-out evaluation as labelled lines: the verdict, the figures, per-class recall, whose images,
    and that none of it is covered by ε."""
    assessment = assess(card)
    rows = [("Validation", f"{assessment.headline.upper() if not assessment.trustworthy else assessment.headline}: "
                           f"{assessment.message}")]
    evaluation, _source = evaluation_of(card.metrics if isinstance(card.metrics, dict) else {})
    if evaluation is None:
        return rows
    recall = evaluation.get("per_class_recall")
    if isinstance(recall, list) and len(recall) == len(card.classes):
        rows.append(("Recall per class", ", ".join(
            f"{name} {_number(value) if value is not None else '-'}" for name, value in zip(card.classes, recall,
                                                                                         strict=True))))
    test_set = evaluation.get("test_set")
    if isinstance(test_set, dict) and test_set.get("held_by"):
        rows.append(("Test images held by", str(test_set["held_by"])))
    note = evaluation.get("release_note")
    if isinstance(note, str) and note:
        rows.append(("Not covered by ε", note))
    return rows
