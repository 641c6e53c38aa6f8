"""The training augmentation (src/esd_data/augmentation.py): configuration and exact draws.

tests/test_properties.py checks what the transforms do (dihedral images of image and labels
together, their frequencies, the blur against scipy, the noise statistics). These tests pin
the rest: the configuration's defaults and limits, and the random protocol, i.e. which
numbers each transform draws from the generator it is given, so that a generator state
always gives the same augmentation (a resumed run repeats its batches exactly). The expected
outputs are built here with np.flip / np.rot90, scipy.ndimage and the generator's own draws.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from scipy import ndimage

from src.esd_data.augmentation import AugmentConfig, FlipRotate, NoiseBlur

PROBABILITIES = ("hflip_p", "vflip_p", "rot90_p", "noise_p", "blur_p")


def test_defaults():
    config = AugmentConfig()
    assert (config.hflip_p, config.vflip_p, config.rot90_p) == (0.5, 0.5, 0.5)
    assert (config.noise_p, config.noise_std) == (0.25, 0.05)
    assert (config.blur_p, config.blur_sigma) == (0.1, 1.0)


@pytest.mark.parametrize("name", PROBABILITIES)
def test_probabilities_must_lie_in_the_unit_interval(name):
    for value in (0.0, 1.0, 0.3):
        assert getattr(AugmentConfig(**{name: value}), name) == value
    for value in (-0.01, 1.01, 2.0):
        with pytest.raises(ValueError, match=rf"^{name} must be a probability in \[0, 1\], got"):
            AugmentConfig(**{name: value})


def test_noise_std_and_blur_sigma_limits():
    assert AugmentConfig(noise_std=0.0).noise_std == 0.0
    assert AugmentConfig(blur_sigma=1e-3).blur_sigma == 1e-3
    for values in ({"noise_std": -0.1}, {"blur_sigma": 0.0}, {"blur_sigma": -1.0}):
        with pytest.raises(ValueError, match=r"^noise_std must be >= 0 and blur_sigma > 0$"):
            AugmentConfig(**values)


# --- FlipRotate ----------------------------------------------------------------------------------


def expected_flip_rotate(image, labels, config: AugmentConfig, seed: int):
    """The documented protocol: three uniform draws (h-flip, v-flip, rotate), then k in 1..3."""
    generator = torch.Generator().manual_seed(seed)
    h, v, r = torch.rand(3, generator=generator).tolist()
    if h < config.hflip_p:
        image, labels = np.flip(image, -1), np.flip(labels, -1)
    if v < config.vflip_p:
        image, labels = np.flip(image, -2), np.flip(labels, -2)
    if r < config.rot90_p:
        k = int(torch.randint(1, 4, (), generator=generator))
        image, labels = np.rot90(image, k, (-2, -1)), np.rot90(labels, k, (-2, -1))
    return image, labels, generator


def test_flip_rotate_follows_the_generator_draws():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(2, 6, 6))
    labels = rng.integers(0, 4, size=(3, 3))
    configs = [AugmentConfig(), AugmentConfig(hflip_p=0.2, vflip_p=0.9, rot90_p=0.7)]
    for config in configs:
        for seed in range(40):
            generator = torch.Generator().manual_seed(seed)
            x, y = FlipRotate(config)(image, labels, generator)
            ex, ey, reference = expected_flip_rotate(image, labels, config, seed)
            np.testing.assert_array_equal(x, ex)
            np.testing.assert_array_equal(y, ey)
            # Exactly these numbers were drawn: both generators are at the same state now.
            assert torch.equal(generator.get_state(), reference.get_state()), seed


def test_flip_rotate_returns_views_of_the_input():
    image = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4)
    labels = np.arange(4).reshape(2, 2)
    config = AugmentConfig(hflip_p=1.0, vflip_p=1.0, rot90_p=1.0)
    x, y = FlipRotate(config)(image, labels, torch.Generator().manual_seed(0))
    assert np.shares_memory(x, image) and np.shares_memory(y, labels)


# --- NoiseBlur -----------------------------------------------------------------------------------


def test_kernel_size_is_odd_and_truncated_at_three_sigma():
    for sigma, size in [(1.0, 7), (0.5, 5), (0.3, 3), (0.1, 1), (2.0, 13), (1.2, 9), (0.8, 5)]:
        assert NoiseBlur(AugmentConfig(blur_sigma=sigma)).kernel_size == size, sigma


def _blur(x: torch.Tensor, sigma: float) -> np.ndarray:
    # torchvision pads by reflection without repeating the edge (scipy's "mirror") and
    # truncates the kernel at radius int(3σ + 0.5) (truncate=3 for these σ).
    return ndimage.gaussian_filter(
        x.double().numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=3.0
    )


def expected_noise_blur(x: torch.Tensor, config: AugmentConfig, seed: int) -> np.ndarray:
    """Blur mask, noise mask (one uniform draw per sample each), blur, then N(0, std²) noise."""
    generator = torch.Generator().manual_seed(seed)
    blur = torch.rand(x.shape[0], generator=generator) < config.blur_p
    noise = (torch.rand(x.shape[0], generator=generator) < config.noise_p).numpy()
    out = x.double().numpy().copy()
    if blur.any():
        out[blur.numpy()] = _blur(x[blur], config.blur_sigma)
    if noise.any() and config.noise_std > 0:
        shape = (int(noise.sum()), *x.shape[1:])
        out[noise] += torch.randn(shape, generator=generator).double().numpy() * config.noise_std
    return out


@pytest.mark.parametrize(
    "values",
    [
        {"blur_p": 0.5, "noise_p": 0.5, "noise_std": 0.3, "blur_sigma": 1.2},
        {"blur_p": 1.0, "noise_p": 1.0, "noise_std": 0.1},  # blurred, then noised
        {"blur_p": 0.0, "noise_p": 0.6, "noise_std": 2.0},
        {"blur_p": 0.7, "noise_p": 0.0},
    ],
)
def test_noise_blur_follows_the_generator_draws(values):
    config = AugmentConfig(**values)
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(7, 3, 9, 9))).float()
    original = x.clone()
    for seed in range(6):
        out = NoiseBlur(config)(x, torch.Generator().manual_seed(seed))
        np.testing.assert_allclose(out.numpy(), expected_noise_blur(x, config, seed), atol=1e-5)
    assert torch.equal(x, original)  # never changed in place


def test_noise_blur_changes_only_the_chosen_samples():
    config = AugmentConfig(blur_p=0.4, noise_p=0.4, noise_std=0.5)
    x = torch.from_numpy(np.random.default_rng(2).normal(size=(12, 2, 8, 8))).float()
    generator = torch.Generator().manual_seed(3)
    out = NoiseBlur(config)(x, generator)
    reference = torch.Generator().manual_seed(3)
    chosen = (torch.rand(12, generator=reference) < 0.4) | (
        torch.rand(12, generator=reference) < 0.4
    )
    assert 0 < int(chosen.sum()) < 12
    changed = (out != x).flatten(1).any(dim=1)
    assert torch.equal(changed, chosen)


def test_no_chosen_sample_or_no_noise_returns_the_input_itself():
    x = torch.ones(4, 1, 5, 5)
    assert NoiseBlur(AugmentConfig(blur_p=0.0, noise_p=0.0))(x) is x
    # Noise chosen, but of zero strength: nothing to do, not even a copy.
    quiet = NoiseBlur(AugmentConfig(blur_p=0.0, noise_p=1.0, noise_std=0.0))
    assert quiet(x, torch.Generator().manual_seed(0)) is x
    noisy = NoiseBlur(AugmentConfig(blur_p=0.0, noise_p=1.0, noise_std=0.1))
    out = noisy(x, torch.Generator().manual_seed(0))
    assert out is not x and (x == 1).all() and (out != 1).all()


def test_the_configuration_is_immutable_and_hashable():
    # Frozen, so that the checks of __post_init__ hold for the whole run.
    config = AugmentConfig(noise_p=0.3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.noise_p = 2.0
    assert hash(config) == hash(AugmentConfig(noise_p=0.3))


def _draws(seed: int, count: int) -> list[float]:
    return torch.rand(count, generator=torch.Generator().manual_seed(seed)).tolist()


def test_a_transform_applies_when_its_draw_is_below_the_probability_only():
    # P(draw < p) = p for a uniform draw, so p = 0 never applies a transform. At p equal to
    # the draw itself the transform is not applied; at the next float above it, it is.
    image, labels = np.arange(2 * 4 * 4).reshape(2, 4, 4), np.arange(4).reshape(2, 2)
    names = ("hflip_p", "vflip_p", "rot90_p")
    for seed in range(3):
        draws = _draws(seed, 3)
        for index, name in enumerate(names):
            at = AugmentConfig(**dict.fromkeys(names, 0.0) | {name: draws[index]})
            x, y = FlipRotate(at)(image, labels, torch.Generator().manual_seed(seed))
            np.testing.assert_array_equal(x, image)
            np.testing.assert_array_equal(y, labels)
            above = float(np.nextafter(np.float32(draws[index]), np.float32(1)))
            config = AugmentConfig(**dict.fromkeys(names, 0.0) | {name: above})
            x, y = FlipRotate(config)(image, labels, torch.Generator().manual_seed(seed))
            assert not np.array_equal(y, labels), (seed, name)


def test_noise_and_blur_apply_when_the_draw_is_below_the_probability_only():
    x = torch.from_numpy(np.random.default_rng(3).normal(size=(1, 1, 8, 8))).float()
    for seed in range(3):
        blur_draw, noise_draw = _draws(seed, 2)
        for name, draw in (("blur_p", blur_draw), ("noise_p", noise_draw)):
            at = {"blur_p": 0.0, "noise_p": 0.0, name: draw}
            out = NoiseBlur(AugmentConfig(**at))(x, torch.Generator().manual_seed(seed))
            assert out is x, (seed, name)
            above = at | {name: float(np.nextafter(np.float32(draw), np.float32(1)))}
            out = NoiseBlur(AugmentConfig(**above))(x, torch.Generator().manual_seed(seed))
            assert not torch.equal(out, x), (seed, name)
