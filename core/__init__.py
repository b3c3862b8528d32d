"""Dopamine desktop core engine: data, models, privacy, secure aggregation, federation, inference.

Never imports Qt (a test enforces it).
"""

import os

__version__ = "0.1.0"

# OpenMP threads that spin while waiting collapse when the CPU is shared (the GUI and a training job,
# or several hospital processes on one machine): a warm prediction went from 45 ms to 360 ms here.
# Must be set before torch is first imported; an explicit setting by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
