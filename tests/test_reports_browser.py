"""The two report pages as a browser shows them: headless Chromium renders the real HTML, and the tests
assert on the laid-out page (visible text, boxes) and on the screenshot's pixels (the pictures are drawn).

A probe script is appended to a copy of each page: on load it writes what the browser laid out as JSON
into the page, which ``--dump-dom`` returns. The same copy is then screenshotted, so the boxes and the
pixels agree. The reports themselves carry no script (the Kubeflow UI's frame would not run it).
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from components.evaluation.evaluate import wilson_interval
from components.evaluation.report import html_report
from components.training.report import EVALUATION_PAGE, TRAINING_PAGE, accuracy_range, axis_ticks, training_report
from tests.report_samples import CHALLENGER, CHAMPION, RUN, SIDE, TRAINING, sample_evaluation, sample_history

BROWSER = "chromium-headless-shell"
WINDOW = (1280, 1800)
PROBE = """<script>
window.addEventListener("load", () => {
  const box = (el) => { const r = el.getBoundingClientRect(); return {x: r.left, y: r.top, w: r.width, h: r.height}; };
  const texts = (root, css) => Array.from(root.querySelectorAll(css), (t) => ({text: t.textContent, box: box(t)}));
  const probe = {
    text: document.body.innerText,
    links: Array.from(document.links, (a) => a.getAttribute("href")),
    images: Array.from(document.images, (i) => ({complete: i.complete, width: i.naturalWidth, height: i.naturalHeight,
                                                  alt: i.alt, box: box(i)})),
    matrices: Array.from(document.querySelectorAll("svg.confusion"),
                         (svg) => ({box: box(svg), cells: Array.from(svg.querySelectorAll("rect"), box)})),
    charts: Array.from(document.querySelectorAll("svg.chart"), (svg) => ({
      box: box(svg), plot: box(svg.querySelector(".plot-area")), legend: box(svg.querySelector(".legend")),
      curves: Array.from(svg.querySelectorAll("polyline"), box),
      yTicks: texts(svg, ".y-tick"), xTicks: texts(svg, ".x-tick")})),
  };
  const pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(probe);
  document.body.appendChild(pre);
});
</script>"""


def browser() -> str:
    path = shutil.which(BROWSER)
    if path is None:
        pytest.skip(f"{BROWSER} is not installed: install the Debian package {BROWSER} (apt-get install {BROWSER}, "
                    "or run .ci/install-browser)")
    return path


def chromium(page: Path, *flags: str) -> str:
    """Run headless Chromium on ``page`` with ``flags``; return its stdout."""
    command = [browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--force-device-scale-factor=1",
               f"--window-size={WINDOW[0]},{WINDOW[1]}", f"--user-data-dir={page.parent / 'profile'}", *flags, page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)  # a hang guard, not a measurement
    assert done.returncode == 0, f"{BROWSER} failed ({done.returncode}): {done.stderr[-2000:]}"
    return done.stdout


def render(page_html: str, folder: Path, name: str) -> tuple[dict, Image.Image]:
    """What the browser laid out (the probe's JSON) and the screenshot of the page, saved as ``folder/name``."""
    page = folder / name
    page.write_text(page_html.replace("</body>", PROBE + "</body>"))
    dom = chromium(page, "--dump-dom")
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, f"the probe did not run; the page as dumped ends with: {dom[-500:]}"
    shot = folder / f"{page.stem}.png"
    chromium(page, f"--screenshot={shot}")
    return json.loads(html.unescape(found.group(1))), Image.open(shot).convert("RGB")


def pixel(shot: Image.Image, box: dict, dx: float, dy: float) -> tuple[int, int, int]:
    """The screenshot's colour at (dx, dy) inside ``box``, after checking the box is on the screenshot."""
    assert box["x"] + box["w"] <= shot.width and box["y"] + box["h"] <= shot.height, f"{box} is outside the {shot.size} screenshot"
    return shot.getpixel((round(box["x"] + dx), round(box["y"] + dy)))


def overlaps(a: dict, b: dict) -> bool:
    return a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]


# --- .ci/install-browser ---------------------------------------------------------------------------------

INSTALL = Path(__file__).resolve().parents[1] / ".ci" / "install-browser"


def test_the_install_script_does_nothing_when_the_browser_is_there():
    browser()
    done = subprocess.run([str(INSTALL)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and f"{BROWSER}: already installed" in done.stdout


def test_the_install_script_says_what_to_install_where_it_cannot_install(tmp_path):
    """A PATH with only bash and id on it: no browser and no apt-get, so nothing can be installed here."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("bash", "id"):
        (tools / tool).symlink_to(shutil.which(tool))
    done = subprocess.run([str(tools / "bash"), str(INSTALL)], capture_output=True, text=True, timeout=60, env={"PATH": str(tools)})
    assert done.returncode == 0, done.stderr
    assert f"{BROWSER}: not installed" in done.stdout and f"apt-get install {BROWSER}" in done.stdout


# --- the chart arithmetic (no browser) -------------------------------------------------------------------

@pytest.mark.parametrize(
    ("low", "high", "ticks"),
    [(0.94, 1.0, [0.94, 0.96, 0.98, 1.0]), (0.11, 0.55, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]), (2.0, 2.0, [2.0, 2.2])],
)
def test_axis_ticks_are_round_numbers_that_cover_the_range(low, high, ticks):
    assert axis_ticks(low, high) == pytest.approx(ticks)


def test_the_accuracy_range_runs_from_just_below_the_later_epochs_lowest_accuracy_to_1():
    assert accuracy_range([[0.95, 0.99]]) == pytest.approx((0.93, 1.0))
    assert accuracy_range([[0.2, 0.6]]) == pytest.approx((0.0, 1.0))
    # A run that climbs from 0.18 (the default make run): its first third (0.18, 0.52) falls below the axis.
    assert accuracy_range([[0.18, 0.52, 0.77, 0.94, 0.95, 0.97], [0.40, 0.80, 0.90, 0.96, 0.98, 0.99]]) == pytest.approx((0.7125, 1.0))
    assert accuracy_range([[0.0]]) == (0.0, 1.0)


# --- the pages in the browser ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """Both pages side by side, as a local run's folder holds them."""
    return tmp_path_factory.mktemp("run")


@pytest.fixture(scope="module")
def evaluation_page(run_folder) -> tuple[dict, Image.Image]:
    return render(html_report(sample_evaluation(), RUN), run_folder, EVALUATION_PAGE)


@pytest.fixture(scope="module")
def training_page(run_folder) -> tuple[dict, Image.Image]:
    return render(training_report(sample_history(), TRAINING), run_folder, TRAINING_PAGE)


def test_each_page_links_to_the_other_by_its_name_in_the_run_folder(evaluation_page, training_page):
    assert evaluation_page[0]["links"] == [TRAINING_PAGE] and training_page[0]["links"] == [EVALUATION_PAGE]


def test_the_evaluation_page_shows_the_verdict_both_models_and_the_interval(evaluation_page):
    text = evaluation_page[0]["text"]
    low, high = wilson_interval(147, 150)
    assert "Evaluation: accepted" in text and "production version 3 scored 0.9533" in text
    assert "challenger (this run)" in text and "champion (production version 3)" in text
    assert "0.9800" in text and "0.9533" in text and f"{low:.4f} – {high:.4f}" in text
    assert "147 of 150" in text and "143 of 150" in text


def test_the_evaluation_page_shows_where_the_result_comes_from(evaluation_page):
    text = evaluation_page[0]["text"]
    assert "run-0042" in text and "2026-12-02 20:31 UTC" in text and "0123abcd4567" in text
    assert "9f2c4e7a1b3d5f60" in text and "arch = small_cnn" in text and "epochs = 5" in text
    assert "/secret/store" not in text


def test_the_confusion_matrix_is_drawn_blue_on_the_diagonal_red_where_confused(evaluation_page):
    probe, shot = evaluation_page
    (matrix,) = probe["matrices"]
    cells = [matrix["cells"][3 * t: 3 * t + 3] for t in range(3)]
    assert all(c["w"] == c["h"] and c["w"] >= 20 for row in cells for c in row), "cells are squares big enough to read"
    for t in range(3):
        for p in range(3):
            r, g, b = pixel(shot, cells[t][p], 3, 3)  # a corner of the cell: its fill, clear of the count
            if t == p:
                assert b > r + 60, f"diagonal cell {t},{p} is not blue: {(r, g, b)}"
            elif CHALLENGER[t, p]:
                assert r > b + 20, f"confused cell {t},{p} ({CHALLENGER[t, p]}) is not red: {(r, g, b)}"
            else:
                assert (r, g, b) == (255, 255, 255), f"empty cell {t},{p} is not white: {(r, g, b)}"


def test_the_misclassified_images_are_decoded_and_shown_with_their_labels(evaluation_page):
    probe, shot = evaluation_page
    images = probe["images"]
    assert [i["alt"] for i in images] == ["true cat, predicted dog", "true bird, predicted dog", "true bird, predicted dog"]
    assert "Misclassified test images: all 3" in probe["text"]
    for image in images:
        assert image["complete"] and (image["width"], image["height"]) == (SIDE, SIDE)
        assert image["box"]["w"] >= 3 * SIDE, "a 28-pixel digit is enlarged to be seen"
        centre, corner = pixel(shot, image["box"], image["box"]["w"] / 2, image["box"]["h"] / 2), pixel(shot, image["box"], 5, 5)
        assert min(centre) > 200 and max(corner) < 50, f"expected a white square on black, got {centre} and {corner}"


def test_the_champion_column_is_the_champion_on_the_same_images(evaluation_page):
    text = evaluation_page[0]["text"]
    assert f"production version 3, were scored on the same {CHAMPION.sum()} test images" in text


def test_the_training_charts_have_ticks_on_both_axes_and_the_legend_beside_the_plot(training_page):
    probe, _ = training_page
    assert len(probe["charts"]) == 2
    for chart in probe["charts"]:
        plot = chart["plot"]
        assert len(chart["yTicks"]) >= 3 and [t["text"] for t in chart["xTicks"]] == ["1", "2", "3", "4", "5"]
        assert all(t["box"]["w"] > 0 and t["box"]["x"] + t["box"]["w"] <= plot["x"] for t in chart["yTicks"])
        assert all(t["box"]["y"] >= plot["y"] + plot["h"] for t in chart["xTicks"])
        assert chart["legend"]["w"] > 0 and not overlaps(chart["legend"], plot), f"legend {chart['legend']} covers the plot {plot}"
        assert not any(overlaps(chart["legend"], curve) for curve in chart["curves"])


def test_the_accuracy_axis_is_zoomed_so_095_to_099_fills_the_chart(training_page):
    probe, shot = training_page
    accuracy = probe["charts"][1]
    ticks = [float(t["text"]) for t in accuracy["yTicks"]]
    assert ticks[-1] == 1.0 and 0.9 <= ticks[0] < 0.95, f"accuracy axis runs {ticks[0]}–{ticks[-1]}"
    validation = accuracy["curves"][1]
    assert validation["h"] > 0.3 * accuracy["plot"]["h"], "the validation curve rises visibly, not a flat line"
    plot = accuracy["plot"]
    colours = {pixel(shot, plot, dx, dy) for dx in range(2, int(plot["w"]) - 2, 2) for dy in range(2, int(plot["h"]) - 2, 2)}
    assert any(b > r + 60 for r, _, b in colours) and any(r > b + 60 for r, _, b in colours), "both curves are drawn"


def test_a_zoomed_axis_says_which_values_it_cuts_off():
    """A run that starts far below its later accuracy: the chart is zoomed, and says so in its title."""
    from tests.report_samples import sample_history

    history = sample_history(6)
    history[0]["train_accuracy"] = history[0]["val_accuracy"] = 0.18
    page = training_report(history, {})
    assert "(values below 0.94, from the first epochs, are cut off)" in page
    assert "are cut off" not in training_report(sample_history(6), {})
