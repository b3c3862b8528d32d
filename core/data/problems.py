"""A problem found in a hospital's image collection: which file, what kind, and why."""

from __future__ import annotations

from dataclasses import dataclass

PROBLEM_KINDS = ("unreadable", "truncated", "not_image", "duplicate", "too_small",
                 "no_image_for_csv_row", "no_label")


@dataclass
class Problem:
    path: str
    kind: str
    reason: str
