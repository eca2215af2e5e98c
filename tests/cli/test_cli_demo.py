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


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "report"
    assert main(["demo", "--quick", "--no-progress", "--out", str(out), "--num-overlays", "2"]) == 0
    return out


def test_demo_quick_writes_report_overlays_and_metrics(quick_demo):
    metrics = json.loads((quick_demo / "metrics.json").read_text())
    models = {row["model"]: row for row in metrics["models"]}
    assert set(models) == {"baseline", "MHEX", "consistency-reweighted", "Comprehensive Attribution"}
    assert all(0.0 <= row["bias-conflicting test accuracy"] <= 1.0 for row in models.values())
    methods = {row["method"]: row for row in metrics["methods"]}
    assert set(methods) == {label for label, _, _ in METHODS}
    for row in methods.values():
        assert 0.0 <= row["deletion AUC ↓"] <= 1.0 and 0.0 <= row["insertion AUC ↑"] <= 1.0
        assert 0.0 <= row["pointing game ↑"] <= 1.0
    assert len(metrics["sags"]) == DemoConfig.quick().sag_images
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
    assert int(counts.group(1)) == html.count("<img ") >= 3
    assert int(counts.group(2)) == 0


def test_demo_rejects_bad_settings(tmp_path):
    with pytest.raises(SystemExit):
        main(["demo", "--quick", "--epochs", "0", "--out", str(tmp_path)])
