"""Joining refuses images whose classes are not the plan's, in the CLI as in the app."""

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from core.errors import DataError
from core.federation.client import _count_and_load
from core.federation.plan import FederationPlan
from core.jobs import NEVER_CANCELLED


def folder(root, classes):
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(2):  # distinct images (duplicates are set aside)
            Image.fromarray(np.full((40, 40, 3), 50 * (2 * k + i), np.uint8)).save(root / name / f"{i}.png")
    return root


def plan(classes):
    return FederationPlan(name="n", federation_id="f", mode="f", rounds=1, hospitals=2, threshold=2, colluders=0,
                          classes=list(classes), image_size=32, batch_size=4, local_epochs=1, lr=0.1, momentum=0.0,
                          server_lr=1.0, server_momentum=0.0)


def test_same_number_of_other_classes_is_refused(tmp_path):
    data = folder(tmp_path / "d", ["cat", "dog"])
    config = SimpleNamespace(data=data, labels_csv=None)
    with pytest.raises(DataError, match="not the classes of the federation's plan"):
        _count_and_load(config, plan(["benign", "malignant"]), None, lambda f, m: None, NEVER_CANCELLED)


def test_the_plans_classes_load(tmp_path):
    data = folder(tmp_path / "d", ["benign", "malignant"])
    config = SimpleNamespace(data=data, labels_csv=None)
    images, labels, _spec = _count_and_load(config, plan(["benign", "malignant"]), None, lambda f, m: None,
                                            NEVER_CANCELLED)
    assert images.shape[0] == 4 and sorted(labels.tolist()) == [0, 0, 1, 1]
