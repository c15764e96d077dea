"""Backbones behind one option: weights are ImageNet, a given file, or random only when asked."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from training.backbones import BACKBONES, build_backbone  # noqa: E402
from training.backbones.registry import WeightsUnavailableError  # noqa: E402


def test_unknown_backbone_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        build_backbone("mobilenet_v9")


@pytest.mark.parametrize("name", ["resnet50", "vgg16"])
def test_missing_keras_weights_stop_with_a_clear_message(name, tmp_path):
    with pytest.raises(WeightsUnavailableError, match="weights=random"):
        build_backbone(name, weights=str(tmp_path / "no_such_weights.h5"))


def test_random_initialisation_only_by_name():
    model = build_backbone("vgg16", image_size=64, weights="random")
    assert model.output.shape[-1] == 512


def test_every_fine_tune_boundary_exists():
    for name, spec in BACKBONES.items():
        if name.startswith("efficientnet"):
            model = build_backbone(name, weights="random")
            for layer in spec.boundaries:
                model.get_layer(layer)
