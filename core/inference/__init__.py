"""Offline inference: open a signed model package, predict, explain (saliency), batch runs and reports.

Public API:
    open_model(path, *, allow_unverified=False, trust=None, require_trusted=False) -> Predictor
        (trust: core.models.trust.TrustStore; Predictor.signer says valid signature and trusted signer apart)
    Predictor.predict_image(image, *, file="") / .predict_file(path) -> Prediction
    Predictor.saliency(image, *, target_index=None) -> Saliency (heatmap float32 [S, S] in [0, 1])
    Predictor.model_view(image) -> PIL image the model sees (resized, center-cropped)
    overlay(image, heatmap, *, opacity) -> PIL image; colorize(heatmap) -> uint8 RGB array
    BatchConfig, run(config, *, progress, cancel) -> BatchResult; run_with(predictor, config, ...)
    find_images(inputs) -> list[Path]; dicom_metadata(path, *, identifying=False);
    card_fields(package, signer=None)
    assess(card) -> ModelAssessment ("validated" | "not validated" | "baseline", with the words to show);
        Predictor.assessment, Prediction.model_validation / model_warning / model_marker
    held_out_evaluation(metrics, labels, classes, *, described, held_by, reference) -> the card's block
    reference_statistics(images_uint8, make_up) -> dict; check_input(...) -> InputCheck (size, colour)
"""

from core.inference.assessment import ModelAssessment, assess, held_out_evaluation
from core.inference.batch import (
    BatchConfig,
    BatchItem,
    BatchResult,
    batch_result,
    predict_files,
    run,
    run_with,
)
from core.inference.card import card_fields, signature_status
from core.inference.dicom_fields import dicom_metadata, is_dicom_path
from core.inference.files import find_images
from core.inference.input_check import InputCheck, check_input, reference_statistics
from core.inference.predictor import Prediction, Predictor, is_dr_model, open_model
from core.inference.report import csv_text, html_text, write_csv, write_html
from core.inference.saliency import (
    GRAD_CAM,
    OCCLUSION,
    Saliency,
    colorize,
    compute_saliency,
    heatmap_image,
    overlay,
)

__all__ = [
    "InputCheck", "ModelAssessment", "assess", "check_input", "held_out_evaluation", "reference_statistics",
    "GRAD_CAM", "OCCLUSION", "BatchConfig", "BatchItem", "BatchResult", "batch_result", "Prediction", "Predictor", "Saliency",
    "card_fields", "colorize", "compute_saliency", "csv_text", "dicom_metadata", "find_images",
    "heatmap_image", "html_text", "is_dicom_path", "is_dr_model", "open_model", "overlay", "predict_files",
    "run", "run_with", "signature_status", "write_csv", "write_html",
]
