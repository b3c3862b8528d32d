"""A federation plan refuses settings its mode would silently ignore."""

import pytest

from core.errors import ConfigError
from core.federation.layout import InitConfig, build_plan


def config(tmp_path, **values) -> InitConfig:
    return InitConfig(folder=tmp_path, name="n", rounds=2, hospitals=3, **values)


@pytest.mark.parametrize("setting", [{"server_lr": 0.5}, {"server_momentum": 0.5}])
def test_fscdp_refuses_server_optimizer_settings_it_would_ignore(tmp_path, setting):
    with pytest.raises(ConfigError, match="--lr and --momentum"):
        build_plan(config(tmp_path, mode="fscdp", **setting), "fid")


def test_fscdp_coordinator_steps_with_the_plans_lr(tmp_path):
    plan = build_plan(config(tmp_path, mode="fscdp", lr=0.3, momentum=0.8), "fid")
    assert (plan.server_lr, plan.server_momentum) == (0.3, 0.8)


@pytest.mark.parametrize(("mode", "setting", "message"), [
    ("fscdp", {"batch_size": 8}, "drop --batch-size"),
    ("fpdp", {"sample_rate": 0.1}, "--sample-rate is for FSCDP"),
    ("f", {"noise_multiplier": 1.0}, "Mode F adds no noise"),
])
def test_settings_of_another_mode_are_refused(tmp_path, mode, setting, message):
    with pytest.raises(ConfigError, match=message):
        build_plan(config(tmp_path, mode=mode, **setting), "fid")
