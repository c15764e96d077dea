"""Backbones behind one option: `build_backbone(name, ...)` returns a Keras feature extractor."""
from training.backbones.registry import BACKBONES, build_backbone, BackboneSpec

__all__ = ["BACKBONES", "BackboneSpec", "build_backbone"]
