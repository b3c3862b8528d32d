"""The coordinator's evaluation reaches the signed card: figures, baseline, test set, and the ε caveat."""

from __future__ import annotations

import numpy as np
from PIL import Image

from core.federation.evaluation import Evaluation
from core.federation.layout import CoordinatorSettings
from core.federation.plan import FederationPlan
from core.inference import assess
from core.models.registry import build_model


def test_the_evaluation_has_what_the_card_and_the_viewer_need(tmp_path):
    rng = np.random.default_rng(0)
    for grade, count in (("0", 6), ("2", 3)):
        (tmp_path / "test" / grade).mkdir(parents=True)
        for index in range(count):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(
                tmp_path / "test" / grade / f"{index}.png")
    plan = FederationPlan(name="t", federation_id="f1", mode="fscdp", rounds=3, hospitals=3, threshold=3,
                          secagg=True, sample_rate=0.3, noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5,
                          image_size=32, model="small_cnn")
    settings = CoordinatorSettings(url="https://x", hosts=["x"], port=1, eval_data=str(tmp_path / "test"))
    evaluation = Evaluation(settings, plan, tmp_path / "cache")
    metrics = evaluation.evaluate(build_model("small_cnn", len(plan.classes)))

    assert metrics["images"] == 9 and metrics["test_set"]["held_by"] == "the coordinator"
    assert metrics["test_set"]["described"] == "the coordinator's own held-out images in folder test"
    assert metrics["majority_class"] == "No DR" and abs(metrics["majority_baseline"] - 6 / 9) < 1e-9
    assert len(metrics["per_class_recall"]) == 5 and "kappa" in metrics
    assert metrics["reference"]["images"] == 9 and metrics["reference"]["width_median"] == 40.0
    assert "ε" in metrics["release_note"]
    # An untrained model on 9 images cannot be told from always answering "No DR".
    card = type("Card", (), {"classes": list(plan.classes), "metrics": {"evaluation": metrics}})()
    assert assess(card).level == "baseline"
