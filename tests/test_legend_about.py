"""The legend's measured row for every method and its note when the row reads backwards; /about's captions.

The legend tests render stored grids (no model runs) against the embedded model's real report
(`reports/smollm2-135m-instruct/eval.json`): a stored grid names its model and weights fingerprint, and the page
reads the report of that model. The /about tests copy the real report into a temporary reports folder, so a changed
copy shows that the caption is read from the data.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from future_lens.lens.lenses import IDENTITY_PATCHSCOPE_PROMPT, PAPER_FIXED_PROMPT
from future_lens.server.config import Settings
from future_lens.server.store import new_stored_grid
from future_lens.server.web.app import create_app
from future_lens.server.web.reports import Calibration, CalibrationBin, calibration_reversal, reversal_note
from future_lens.service import LensService
from tests.export_helpers import sample_grid

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = "smollm2-135m-instruct"
REPORT = ROOT / "future_lens" / "reports" / EMBEDDED
#: The grid's method -> the report's method and the measure its shades are (the colour: N tokens' mean, or the
#: next token's probability for the next-token readouts).
MEASURED = {
    "future": ("learned_prompt", "mean_prob"),
    "fixed": ("fixed_prompt", "mean_prob"),
    "identity": ("identity_patchscope", "mean_prob"),
    "logit": ("logit_lens", "first_token"),
    "tuned": ("tuned_lens", "first_token"),
    "jacobian": ("jacobian_lens", "first_token"),
}
PROMPTS = {"fixed": PAPER_FIXED_PROMPT, "identity": IDENTITY_PATCHSCOPE_PROMPT}
MIN_CELLS = 20  # the legend writes – for a shade fewer held-out cells had


def real_report() -> dict:
    return json.loads((REPORT / "eval.json").read_text())


@pytest.fixture(scope="module")
def client(tiny_gptj, tmp_path_factory) -> TestClient:
    """The app with its default reports folder (the source checkout's reports/)."""
    app = create_app(Settings(db_path=tmp_path_factory.mktemp("legend") / "g.sqlite3"), service=LensService(tiny_gptj))
    assert app.state.reports_dir == ROOT / "future_lens" / "reports"
    return TestClient(app)


def stored_page(client: TestClient, method: str, grid_id: str) -> str:
    """The permalink page of a stored grid of `method` computed (the grid says) on the embedded model."""
    report = real_report()
    n_future = 1 if MEASURED[method][1] == "first_token" else 4
    grid = sample_grid(n_layers=4, n_tokens=5, n_future=n_future, method=method, borrowed=False)
    model = grid.model.model_copy(update={"id": EMBEDDED, "fingerprint": report["model_fingerprint"]})
    grid = grid.model_copy(update={"model": model, "prompt": PROMPTS.get(method)})
    document = {**grid.model_dump(mode="json", by_alias=True), "id": grid_id, "permalink": f"/g/{grid_id}"}
    request = {"text": "x", "method": method, "n_future": n_future}
    client.app.state.store.put(new_stored_grid(grid_id, EMBEDDED, request, json.dumps(document)))
    page = client.get(f"/g/{grid_id}")
    assert page.status_code == 200, page.text
    return page.text


def legend_of(page: str) -> str:
    return re.search(r'<div class="legend".*?</div>', page, flags=re.DOTALL).group(0)


def legend_shares(page: str) -> list[str]:
    return re.findall(r'<span class="share"[^>]*>.*?<span aria-hidden="true">([^<]*)</span></span>', page)


def expected_shares(report_method: str, measure: str) -> tuple[list[str], int]:
    reliability = real_report()["methods"][report_method]["calibration"][measure]
    shares = [
        "–" if b["accuracy"] is None or b["count"] < MIN_CELLS else f"{b['accuracy'] * 100:.0f}%"
        for b in reliability["bins"]
    ]
    return shares, reliability["n"]


@pytest.mark.parametrize("method", list(MEASURED))
def test_legend_of_every_method_shows_its_measured_row(client, method):
    page = stored_page(client, method, f"legend{method[:4]:a<4}aa"[:12])
    legend = legend_of(page)
    assert "right on held-out text" in legend
    shares, n = expected_shares(*MEASURED[method])
    assert legend_shares(legend) == shares
    assert f"Second row: of {n} held-out cells" in legend


def test_logit_lens_legend_says_its_row_reads_backwards(client):
    legend = legend_of(stored_page(client, "logit", "legendlogitz"))
    bins = real_report()["methods"]["logit_lens"]["calibration"]["first_token"]["bins"]
    darkest, faint = bins[-1], bins[0]
    assert darkest["accuracy"] < faint["accuracy"]  # the measurement: 90%+ shades are right less often
    note = re.search(r'<p class="legend-note legend-reversed">(.*?)</p>', legend, flags=re.DOTALL)
    assert note, legend
    text = re.sub(r"<[^>]+>", "", note.group(1))
    assert "higher shades are not more often right here" in text
    assert f"cells shaded 90–100% were right {darkest['accuracy'] * 100:.0f}% of the time" in text
    assert f"cells shaded 0–10% {faint['accuracy'] * 100:.0f}%" in text


@pytest.mark.parametrize("method", ["future", "tuned", "jacobian"])
def test_legend_of_a_row_that_reads_forwards_has_no_note(client, method):
    page = stored_page(client, method, f"forward{method[:4]:a<4}a"[:12])
    assert "legend-reversed" not in legend_of(page)


def bins_of(accuracies: list[float | None], counts: list[int]) -> Calibration:
    bins = [
        CalibrationBin(i / 10, (i + 1) / 10, count, accuracy)
        for i, (accuracy, count) in enumerate(zip(accuracies, counts, strict=True))
    ]
    return Calibration("logit_lens", "first_token", bins, sum(counts))


def test_reversal_needs_a_drop_beyond_noise_between_measured_shades():
    rising = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95]
    assert calibration_reversal(bins_of(rising, [500] * 10), MIN_CELLS) is None
    wobble = [0.1, 0.2, 0.3, 0.4, 0.39, 0.6, 0.7, 0.8, 0.9, 0.95]  # a point's dip: noise, not a reversal
    assert calibration_reversal(bins_of(wobble, [500] * 10), MIN_CELLS) is None
    few = [*rising[:-1], 0.0]  # the darkest shade is wrong every time, but only 5 cells had it
    assert calibration_reversal(bins_of(few, [500] * 9 + [5]), MIN_CELLS) is None
    middle = [0.1, 0.2, 0.5, 0.3, 0.3, 0.6, 0.7, 0.8, 0.9, 0.95]
    reversal = calibration_reversal(bins_of(middle, [500] * 10), MIN_CELLS)
    assert (reversal.lower.low, reversal.higher.low) == (0.2, 0.3)
    backwards = [0.5, 0.4, 0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.2, 0.3]
    reversal = calibration_reversal(bins_of(backwards, [500] * 10), MIN_CELLS)
    assert (reversal.lower.low, reversal.higher.low) == (0.0, 0.9)  # the darkest shade's reversal first
    assert "cells shaded 90–100% were right 30% of the time, cells shaded 0–10% 50%" in reversal_note(
        bins_of(backwards, [500] * 10), MIN_CELLS
    )


# ---------- /about: the learning curve's caption ----------


@pytest.fixture()
def about_client(tiny_gptj, tmp_path) -> TestClient:
    """An app reading a copy of the embedded model's real report, filed under the served (tiny) model's id."""
    app = create_app(Settings(db_path=tmp_path / "g.sqlite3"), service=LensService(tiny_gptj))
    app.state.reports_dir = tmp_path / "reports"
    shutil.copytree(REPORT, app.state.reports_dir / tiny_gptj.id)
    return TestClient(app)


def learning_curve_caption(page: str) -> str:
    figure = re.search(r"<figure>(?:(?!</figure>).)*learning_curve\.png.*?</figure>", page, flags=re.DOTALL)
    assert figure, "no learning-curve figure on /about"
    return re.sub(r"<[^>]+>", "", re.search(r"<figcaption>(.*?)</figcaption>", figure.group(0), re.S).group(1))


def test_about_learning_curve_caption_names_its_dev_size_and_layers(about_client):
    curve = json.loads((REPORT / "learning_curve.json").read_text())
    dev, layers = curve["config"]["curve_dev"], sorted(int(layer) for layer in curve["points"][-1]["layers"])
    assert (dev, layers[0], layers[-1], len(layers)) == (64, 10, 21, 12)  # what the committed plot was made from
    caption = learning_curve_caption(about_client.get("/about").text)
    assert f"{dev} dev examples" in caption and "layers 10–21" in caption
    evaluated = real_report()["dev_examples"]
    assert f"{evaluated} dev examples" in caption  # the tables' own dev size, for the comparison


def test_about_learning_curve_caption_is_read_from_the_report(about_client, tiny_gptj):
    folder = about_client.app.state.reports_dir / tiny_gptj.id
    curve = json.loads((folder / "learning_curve.json").read_text())
    curve["config"]["curve_dev"] = 48
    for point in curve["points"]:
        point["layers"] = {layer: values for layer, values in point["layers"].items() if int(layer) in (12, 13, 14, 20)}
    (folder / "learning_curve.json").write_text(json.dumps(curve))
    caption = learning_curve_caption(about_client.get("/about").text)
    assert "48 dev examples" in caption and "layers 12–14, 20" in caption and "64 dev examples" not in caption


# ---------- the logit lens's legend in a browser ----------


@pytest.mark.browser
@pytest.mark.parametrize(("width", "name"), [(1280, "desktop"), (390, "phone")])
def test_logit_lens_legend_in_a_browser(client, width, name):
    from playwright.sync_api import sync_playwright

    from tests.server_helpers import serving
    from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, missing_browser

    if not CHROMIUM.exists():
        missing_browser()
    stored_page(client, "logit", "legendbrowsr")
    problems: list[str] = []
    with serving(client.app) as base, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 800})
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("console", lambda message: problems.append(f"console {message.type}: {message.text}"))
            page.goto(f"{base}/g/legendbrowsr")
            note = page.locator(".legend .legend-reversed")
            assert note.is_visible() and "higher shades are not more often right" in note.inner_text()
            shares = page.locator(".legend .share > [aria-hidden]").all_inner_texts()
            assert shares == expected_shares("logit_lens", "first_token")[0]
            legend = page.locator(".legend")
            box = legend.bounding_box()
            assert box["x"] >= 0 and box["x"] + box["width"] <= width  # nothing sticks out of a narrow screen
            legend.screenshot(path=str(ROOT / "tests" / "artifacts" / f"legend-logit-{name}.png"))
        finally:
            browser.close()
    assert problems == []
