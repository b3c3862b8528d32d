"""Hospital image collections: reading (folders, APTOS CSV, DICOM), validation, preprocessing, caching,
splitting, and the SYNTHETIC fundus generator used for demos and tests."""

from core.data.cache import load_tensors
from core.data.dataset import DR_CLASSES, HospitalDataset, Sample, open_dataset
from core.data.images import IMAGE_SUFFIXES, ImageReadError, load_image
from core.data.preprocess import Preprocessing, normalize, preprocess, resize_crop
from core.data.problems import Problem
from core.data.split import stratified_split
from core.data.synthetic import (
    APTOS_LABEL_MIX,
    HospitalStyle,
    generate_fundus,
    hospital_style,
    write_demo_data,
)
from core.data.validation import ValidationReport, validate

__all__ = [
    "APTOS_LABEL_MIX",
    "DR_CLASSES",
    "IMAGE_SUFFIXES",
    "HospitalDataset",
    "HospitalStyle",
    "ImageReadError",
    "Preprocessing",
    "Problem",
    "Sample",
    "ValidationReport",
    "generate_fundus",
    "hospital_style",
    "load_image",
    "load_tensors",
    "normalize",
    "open_dataset",
    "preprocess",
    "resize_crop",
    "stratified_split",
    "validate",
    "write_demo_data",
]
