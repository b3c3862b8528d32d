"""A problem found in a hospital's image collection: which file, what kind, and why."""

from __future__ import annotations

from dataclasses import dataclass

PROBLEM_KINDS = ("unreadable", "truncated", "not_image", "too_many_frames", "duplicate", "too_small",
                 "no_fundus_disc", "no_image_for_csv_row", "no_label")

NOTES = frozenset({"too_small", "no_fundus_disc"})
"""Kinds that do not cost an image: it is used all the same (upscaled; plain crop instead of the retina's)."""


@dataclass
class Problem:
    path: str
    kind: str
    reason: str
