"""Hospital image collections: reading (folders, APTOS CSV, DICOM: compressed and multi-frame),
validation and make-up, preprocessing (plain or fundus crop), caching, splitting, and the SYNTHETIC fundus
generator used for demos and tests."""

from core.data.cache import load_tensors
from core.data.dataset import DR_CLASSES, HospitalDataset, Sample, open_dataset
from core.data.fundus import Disc, DiscSearch, find_disc
from core.data.images import (
    IMAGE_SUFFIXES,
    MAX_FRAMES_PER_FILE,
    ImageInfo,
    ImageReadError,
    load_frames,
    load_image,
    read_image_info,
)
from core.data.preprocess import Prepared, Preprocessing, normalize, prepare, preprocess, resize_crop
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
    "MAX_FRAMES_PER_FILE",
    "Disc",
    "DiscSearch",
    "HospitalDataset",
    "HospitalStyle",
    "ImageInfo",
    "ImageReadError",
    "Prepared",
    "Preprocessing",
    "Problem",
    "Sample",
    "ValidationReport",
    "find_disc",
    "generate_fundus",
    "hospital_style",
    "load_frames",
    "load_image",
    "load_tensors",
    "normalize",
    "open_dataset",
    "prepare",
    "preprocess",
    "read_image_info",
    "resize_crop",
    "stratified_split",
    "validate",
    "write_demo_data",
]
