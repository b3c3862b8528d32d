"""Model architectures (plain torch) and the signed model package (.dpm)."""

from core.models.registry import (
    MODEL_NAMES,
    build_model,
    check_weights,
    count_parameters,
    last_conv_layer,
    load_weights,
)

__all__ = ["MODEL_NAMES", "build_model", "check_weights", "count_parameters", "last_conv_layer", "load_weights"]
