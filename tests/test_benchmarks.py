"""The benchmark's own bookkeeping (no server): what its tables are built from."""
from __future__ import annotations

import io

from PIL import Image

from benchmarks import rows as R
from benchmarks.measure import _INSTANCE, Row, merge_rows


def test_stub_instance_names_map_to_their_model():
    assert _INSTANCE.match("preprocess_0_1").group(1) == "preprocess"
    assert _INSTANCE.match("effnet_lite0_classifier_1_0").group(1) == "effnet_lite0_classifier"
    for other in ("triton_python_backend_shm_region_f877cf54-2230-4923-8f76-bbd78f4b006d", "1048576",
                  "repo/preprocess/1/model.py", "DEFAULT"):
        assert _INSTANCE.match(other) is None


def test_cpu_per_image_is_merged_weighted_by_images():
    a = Row("3r", "x", 100, 1.0, params={"cpu_ms_per_image": {"client": 1.0, "stubs": 10.0}})
    b = Row("3r", "x", 300, 2.0, params={"cpu_ms_per_image": {"client": 2.0}})
    merged = merge_rows([a, b]).params["cpu_ms_per_image"]
    assert merged == {"client": (100 * 1.0 + 300 * 2.0) / 400, "stubs": 100 * 10.0 / 400}


def test_phone_sized_photos_and_the_draft_switch():
    buffer = io.BytesIO()
    Image.new("RGB", (255, 255), (200, 30, 30)).save(buffer, "JPEG")
    [big] = R.phone_sized([buffer.getvalue()], size=(2016, 1512))
    assert Image.open(io.BytesIO(big)).size == (2016, 1512)
    from training.preprocessing import imaging

    with_draft = R.preprocess_only(imaging, [big], "2d", "draft")
    without = R.preprocess_only(imaging, [big], "2d0", "full", draft=False)
    assert with_draft.images == without.images == 1
    assert with_draft.latencies_s and without.latencies_s
