"""Where a model computes: ``auto`` (a CUDA GPU when there is one, else the CPU), ``cpu`` or ``cuda``.

The same names everywhere: ``dopamine train``, ``join``, ``simulate`` and ``compare`` take ``--device``, and
the app's Settings choose one for its training, federation and comparison jobs.

Only the model, its batches and its gradients move to the device. Every draw differential privacy depends on
(Poisson batches, flips, Gaussian noise) is made by core.privacy.noise.DPRandom on the CPU, and noise is added
in float64 on the CPU before the sum is copied back to the device (``DPRandom.add_normal_``), so where a run
computes changes neither its privacy nor its random draws. torch is imported only when a device is resolved:
the coordinator's serving process never needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.errors import ConfigError, DeviceUnavailable

if TYPE_CHECKING:  # pragma: no cover
    import torch

DEVICES = ("auto", "cpu", "cuda")
DEFAULT_DEVICE = "auto"
DEVICE_HELP = "where the model computes: auto (a CUDA GPU when there is one, else the CPU; default), cpu or cuda"


def check_device_name(name: str) -> str:
    """``name`` when it is one of DEVICES, else a ConfigError saying which ones there are."""
    if name not in DEVICES:
        raise ConfigError(f"The device must be 'auto', 'cpu' or 'cuda' (got {name!r}).")
    return name


def cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def device_name(name: str) -> str:
    """The device ``name`` resolves to here: "cpu" or "cuda" (DeviceUnavailable for cuda without a GPU)."""
    check_device_name(name)
    if name == "cpu":
        return "cpu"
    if cuda_available():
        return "cuda"
    if name == "cuda":
        raise DeviceUnavailable("CUDA was chosen but this computer has no usable CUDA GPU; choose 'cpu' or 'auto'.")
    return "cpu"


def resolve_device(name: str) -> torch.device:
    """The torch device ``name`` resolves to (see device_name)."""
    import torch

    return torch.device(device_name(name))


def describe_device(name: str) -> str:
    """One line for people: what ``name`` computes on here, e.g. "CPU (no CUDA GPU found)"."""
    check_device_name(name)
    if name == "cpu":
        return "CPU (chosen)"
    if cuda_available():
        import torch

        try:
            gpu = torch.cuda.get_device_name(0)
        except Exception:  # noqa: BLE001 -- the name is a courtesy; the device is usable
            gpu = "GPU"
        return f"CUDA: {gpu}"
    if name == "cuda":
        return "none: CUDA was chosen but no CUDA GPU was found; choose Auto or CPU"
    return "CPU (no CUDA GPU found)"
