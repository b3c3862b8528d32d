"""Dopamine desktop core engine: data, models, privacy, secure aggregation, federation, inference.

Never imports Qt (a test enforces it).
"""

__version__ = "0.1.0"
