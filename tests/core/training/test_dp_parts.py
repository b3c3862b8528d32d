"""A DP-SGD step over a Poisson batch larger than core.privacy.dpsgd.DP_PHYSICAL_BATCH runs through the model in parts (issue 14:
memory), and is still one release: the same clipped sum, noised once, as the whole batch at once."""

import torch

from core.data.preprocess import Preprocessing
from core.models.registry import build_model
from core.privacy import dpsgd
from core.privacy.noise import DPRandom
from core.training import loop
from core.training.loop import DPSettings, train_local

KEY = bytes(range(32))
REAL_ADD_NORMAL, REAL_NORMALIZE = DPRandom.add_normal_, loop.normalize


def _train(monkeypatch, part: int, *, noise: bool = True):
    """(weights, steps, the size of every noise draw, the size of every batch through the model)."""
    monkeypatch.setattr(dpsgd, "DP_PHYSICAL_BATCH", part)
    noise_draws: list[int] = []
    forwards: list[int] = []

    def add_normal_(self, tensor, std):
        noise_draws.append(tensor.numel())
        return REAL_ADD_NORMAL(self, tensor, std) if noise else tensor

    def normalize(images, spec):  # what goes through the model (hooks on the model are refused by DP-SGD)
        forwards.append(images.shape[0])
        return REAL_NORMALIZE(images, spec)

    monkeypatch.setattr(DPRandom, "add_normal_", add_normal_)
    monkeypatch.setattr(loop, "normalize", normalize)
    torch.manual_seed(0)
    model = build_model("small_cnn", 5)
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 5, (40,), generator=generator)
    stats = train_local(model, images, labels, Preprocessing(size=32), epochs=2, batch_size=20, lr=0.1,
                        dp=DPSettings(noise_multiplier=1.0, max_grad_norm=1.0), rng=DPRandom(KEY))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, stats.steps, noise_draws, forwards


def test_a_split_step_is_the_whole_batch_step_noised_once(monkeypatch):
    whole, steps, whole_draws, whole_forwards = _train(monkeypatch, part=1000)
    split, split_steps, split_draws, split_forwards = _train(monkeypatch, part=4)
    assert steps == split_steps == 4  # 2 epochs of 2 logical batches (q = 0.5)
    assert max(whole_forwards) > 4 and max(split_forwards) <= 4  # the parts really were smaller
    assert len(split_forwards) > len(whole_forwards)
    # One noise draw per logical step, over every parameter, in both: the parts are not separate releases.
    assert len(whole_draws) == len(split_draws) == steps
    assert split_draws == whole_draws
    for name, tensor in whole.items():
        torch.testing.assert_close(split[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


def test_parts_change_nothing_when_the_batch_fits(monkeypatch):
    first, *_ = _train(monkeypatch, part=1000)
    second, *_ = _train(monkeypatch, part=10_000)
    for name, tensor in first.items():
        assert torch.equal(second[name], tensor), name


def test_the_noise_of_a_split_step_matters(monkeypatch):
    """Control: the comparison above can fail - the same split run without its noise ends elsewhere."""
    noised, *_ = _train(monkeypatch, part=4)
    plain, *_ = _train(monkeypatch, part=4, noise=False)
    assert any(not torch.allclose(plain[k], v, atol=1e-4) for k, v in noised.items())
