"""Model architectures (plain torch) and the signed model package (.dpm).

The names below come from core.models.registry when first used: importing a module of this package
(core.models.package, to write a model card) does not import torch.
"""

from typing import TYPE_CHECKING, Any

__all__ = ["MODEL_NAMES", "build_model", "check_weights", "count_parameters", "last_conv_layer", "load_weights"]

if TYPE_CHECKING:
    from core.models.registry import (
        MODEL_NAMES,
        build_model,
        check_weights,
        count_parameters,
        last_conv_layer,
        load_weights,
    )


def __getattr__(name: str) -> Any:
    if name in __all__:
        from core.models import registry

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
