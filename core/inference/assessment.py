"""Is a model worth listening to? What its card says it scored on held-out images, in one verdict.

Every place that shows a diagnosis (the Viewer, ``dopamine predict``, the CSV and HTML exports) shows this
verdict beside it, so a model that learned nothing cannot answer "Not referable" in a confident voice:

- ``validated``: the card holds an evaluation on held-out images that beats always answering the most
  common class by more than chance;
- ``not validated``: the card holds no evaluation at all, so nobody knows how often the model is right;
- ``baseline``: the evaluation is no better than always answering the most common class (accuracy within
  two standard errors of that baseline, chance-level agreement, or one answer for every test image).

The figures are the signer's claims: the signature status says whether that signer is trusted.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

VALIDATED = "validated"
NOT_VALIDATED = "not validated"
BASELINE = "baseline"

# Quadratic weighted kappa below this is chance-level agreement ("slight" at best, Landis and Koch 1977).
CHANCE_KAPPA = 0.1
# How many standard errors of the baseline's accuracy a model must beat it by: 2 is about 95% one-sided.
MARGIN_STANDARD_ERRORS = 2.0

RELEASE_NOTE = ("These figures were computed on held-out patients' images and are published with the model; "
                "the privacy guarantee (ε) does not cover them.")


@dataclass(frozen=True)
class ModelAssessment:
    level: str  # VALIDATED | NOT_VALIDATED | BASELINE
    headline: str  # a few words, for a banner's bold start and a marker beside each answer
    message: str  # the whole verdict in plain words
    source: str = ""  # where the figures come from ("the coordinator's held-out images (folder test)")
    images: int | None = None
    accuracy: float | None = None
    kappa: float | None = None
    baseline: float | None = None  # accuracy of always answering ``baseline_class``
    baseline_class: str | None = None

    @property
    def trustworthy(self) -> bool:
        return self.level == VALIDATED

    @property
    def short(self) -> str:
        """The verdict in one sentence, for a banner beside the answers (``message`` has the reasons)."""
        if self.level == NOT_VALIDATED:
            return ("Its card holds no evaluation on held-out images: nobody knows how often it is right. Do not use "
                    "its answers for patients.")
        on = f" on {self.images} held-out images" if self.images else ""
        scored = f"It scored accuracy {self.accuracy:.3f}{on}" if self.accuracy is not None else "Its evaluation"
        baseline = (f"; always answering “{self.baseline_class}” scores {self.baseline:.3f}"
                    if self.baseline is not None else "")
        if self.level == BASELINE:
            return f"{scored}{baseline}. Do not use its answers for patients."
        return f"{scored}{baseline}."

    @property
    def marker(self) -> str:
        """What goes beside every answer of a model that is not validated ("" otherwise)."""
        if self.level == VALIDATED:
            return ""
        return "[NOT VALIDATED]" if self.level == NOT_VALIDATED else "[NO BETTER THAN BASELINE]"

    def to_dict(self) -> dict[str, Any]:
        return {key: value for key, value in asdict(self).items() if value is not None}


def evaluation_of(metrics: dict) -> tuple[dict | None, str]:
    """The held-out evaluation in a card's metrics and whose images it used, or (None, "")."""
    for key, whose in (("evaluation", "the coordinator's held-out images"),
                       ("validation", "the training hospital's held-out validation images")):
        value = metrics.get(key)
        if isinstance(value, dict) and _number(value.get("accuracy")) is not None:
            test_set = value.get("test_set")
            if isinstance(test_set, dict) and test_set.get("described"):
                whose = str(test_set["described"])
            return value, whose
    if _number(metrics.get("accuracy")) is not None:  # cards written before the evaluation had a name
        return metrics, "held-out images"
    return None, ""


def assess(card: Any) -> ModelAssessment:
    """The verdict on a model from its card (core.models.package.ModelCard or anything with the same
    ``metrics`` and ``classes``)."""
    classes = list(getattr(card, "classes", []) or [])
    metrics = getattr(card, "metrics", None) or {}
    evaluation, source = evaluation_of(metrics if isinstance(metrics, dict) else {})
    if evaluation is None:
        return ModelAssessment(
            NOT_VALIDATED, "Not validated",
            "This model's card holds no evaluation on held-out images, so nobody knows how often it is right. "
            "Do not use its answers for patients.")
    accuracy = float(evaluation["accuracy"])
    kappa = _number(evaluation.get("kappa"))
    matrix = _matrix(evaluation.get("confusion_matrix"), len(classes))
    images = _count(evaluation, matrix)
    if images == 0:
        return ModelAssessment(
            NOT_VALIDATED, "Not validated",
            "This model's evaluation used no images, so nobody knows how often it is right. Do not use its "
            "answers for patients.", source=source, images=0)
    baseline, baseline_class = _baseline(evaluation, matrix, classes)
    only_answer = _only_answer(matrix, classes)
    reasons = []
    if only_answer is not None:
        reasons.append(f"it answered “{only_answer}” for every one of the {images} test images")
    if baseline is not None and images:
        margin = MARGIN_STANDARD_ERRORS * math.sqrt(max(baseline * (1 - baseline), 1e-12) / images)
        if accuracy <= baseline + margin:
            reasons.append(f"its accuracy {accuracy:.3f} is within {margin:.3f} (two standard errors on "
                           f"{images} images) of the {baseline:.3f} of always answering “{baseline_class}”")
    if kappa is not None and kappa < CHANCE_KAPPA:
        reasons.append(f"its agreement with the true grades (κ = {kappa:.2f}) is at chance level")
    figures = f"accuracy {accuracy:.3f}" + (f", κ {kappa:.2f}" if kappa is not None else "")
    if baseline is not None:
        figures += f"; always answering “{baseline_class}” scores {baseline:.3f}"
    count = f" ({images} images)" if images is not None else ""
    common: dict[str, Any] = dict(source=source, images=images, accuracy=accuracy, kappa=kappa, baseline=baseline,
                  baseline_class=baseline_class)
    if reasons:
        answer = baseline_class or only_answer or "the most common class"
        return ModelAssessment(
            BASELINE, f"No better than always answering “{answer}”",
            f"On {source}{count}, this model scored {figures}: " + "; ".join(reasons)
            + ". Its answers carry no information about the patient: do not use them for patients.",
            **common)
    return ModelAssessment(VALIDATED, "Validated on held-out images",
                           f"On {source}{count}, this model scored {figures}.", **common)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _matrix(value: Any, classes: int) -> list[list[int]] | None:
    if not isinstance(value, list) or len(value) != classes or classes == 0:
        return None
    rows = []
    for row in value:
        if not isinstance(row, list) or len(row) != classes:
            return None
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in row):
            return None
        rows.append(list(row))
    return rows


def _count(evaluation: dict, matrix: list[list[int]] | None) -> int | None:
    for key in ("images", "num_examples"):
        value = evaluation.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return sum(map(sum, matrix)) if matrix is not None else None


def _baseline(evaluation: dict, matrix: list[list[int]] | None, classes: list[str]) -> tuple[float | None, str | None]:
    """Accuracy of always answering the most common true class, and that class, from the card's own figure
    or from the confusion matrix (rows are true classes)."""
    recorded = _number(evaluation.get("majority_baseline"))
    name = evaluation.get("majority_class")
    if matrix is not None:
        support = [sum(row) for row in matrix]
        total = sum(support)
        if total:
            index = max(range(len(support)), key=support.__getitem__)
            return (recorded if recorded is not None else support[index] / total), classes[index]
    return recorded, (str(name) if isinstance(name, str) else None)


def _only_answer(matrix: list[list[int]] | None, classes: list[str]) -> str | None:
    """The one class a model answered for every test image, if it did (confusion matrix columns)."""
    if matrix is None:
        return None
    answered = [j for j in range(len(classes)) if any(row[j] for row in matrix)]
    return classes[answered[0]] if len(answered) == 1 else None


def held_out_evaluation(metrics: dict, labels: list[int], classes: list[str], *, described: str, held_by: str,
                        reference: dict | None = None) -> dict:
    """The evaluation block a card carries (``metrics``: core.training.metrics.compute_metrics' figures on
    held-out images whose true classes are ``labels``): the figures, the test set's size and whose images
    they are, the majority baseline, the images' reference statistics (core.inference.input_check) and the
    note that none of it is covered by ε."""
    counts = [0] * len(classes)
    for label in labels:
        if 0 <= int(label) < len(classes):
            counts[int(label)] += 1
    total = sum(counts)
    block = dict(metrics)
    block["images"] = total
    if total:
        index = max(range(len(counts)), key=counts.__getitem__)
        block["majority_class"] = classes[index]
        block["majority_baseline"] = counts[index] / total
    block["test_set"] = {"images": total, "held_by": held_by, "described": described}
    if reference:
        block["reference"] = dict(reference)
    block["release_note"] = RELEASE_NOTE
    return block
