"""Hospital image collections: reading (folders, APTOS CSV, DICOM: compressed and multi-frame),
validation and make-up, preprocessing (plain or fundus crop), caching, splitting, and the SYNTHETIC fundus
generator used for demos and tests.

The names below are loaded from their modules on first use, not on ``import core.data...``: several
import torch (cache, store), which a process that only reads images or writes a model card (the
coordinator, a command's argument parser) should not pay for. The function preprocess is imported from
core.data.preprocess: the package attribute of that name is the module."""

from typing import TYPE_CHECKING, Any

_MODULES = {
    "load_tensors": "core.data.cache",
    "DR_CLASSES": "core.data.dataset",
    "HospitalDataset": "core.data.dataset",
    "Sample": "core.data.dataset",
    "open_dataset": "core.data.dataset",
    "Disc": "core.data.fundus",
    "DiscSearch": "core.data.fundus",
    "find_disc": "core.data.fundus",
    "IMAGE_SUFFIXES": "core.data.images",
    "ImageInfo": "core.data.images",
    "ImageReadError": "core.data.images",
    "MAX_FRAMES_PER_FILE": "core.data.images",
    "load_frames": "core.data.images",
    "load_image": "core.data.images",
    "read_image_info": "core.data.images",
    "Prepared": "core.data.preprocess",
    "Preprocessing": "core.data.preprocess",
    "normalize": "core.data.preprocess",
    "prepare": "core.data.preprocess",
    "resize_crop": "core.data.preprocess",
    "Problem": "core.data.problems",
    "stratified_split": "core.data.split",
    "APTOS_LABEL_MIX": "core.data.synthetic",
    "HospitalStyle": "core.data.synthetic",
    "generate_fundus": "core.data.synthetic",
    "hospital_style": "core.data.synthetic",
    "write_demo_data": "core.data.synthetic",
    "ValidationReport": "core.data.validation",
    "validate": "core.data.validation",
}

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
    "read_image_info",
    "resize_crop",
    "stratified_split",
    "validate",
    "write_demo_data",
]

if TYPE_CHECKING:
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
    from core.data.preprocess import Prepared, Preprocessing, normalize, prepare, resize_crop
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


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        import importlib

        return getattr(importlib.import_module(_MODULES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
