"""`cifarkit serve` with a trained channels-last model: the page in a real headless
Chromium (Selenium driving Debian's `chromium` and `chromium-driver`, which `.ci/run` installs),
and predict == serve after Grad-CAM has run on the same model.

The browser test saves its screenshots to benchmarks/results/serve_page.png and serve_runs.png.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import pytest

from cifarkit.cli import main as cli_main
from cifarkit.serve.launch import running_server
from conftest import make_images
from test_serve import cli_predict, png_bytes, post

pytest.importorskip("fastapi")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
SHOTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"


# installed in the page before the upload: notes each card whose Grad-CAM slot shows the placeholder,
# and any Grad-CAM <img> that is in the page with a src but not loaded (a broken-image icon)
CAM_WATCH = """
window.camWatch = { placeholder: [], broken: [] };
const look = () => document.querySelectorAll("#results .card").forEach((card) => {
  const name = card.querySelector(".name").textContent;
  if (card.querySelector(".cam-slot .cam-placeholder") && !camWatch.placeholder.includes(name)) {
    camWatch.placeholder.push(name);
  }
  for (const img of card.querySelectorAll(".cam-slot img")) {
    if (img.getAttribute("src") && !(img.complete && img.naturalWidth > 0)) camWatch.broken.push(name);
  }
});
new MutationObserver(look).observe(document.getElementById("results"),
                                   { childList: true, subtree: true, attributes: true });
"""
CAM_SLOTS_OK = """
return [...document.querySelectorAll(".card .cam-slot")].every((slot) => slot.querySelector(".cam-placeholder")
  || [...slot.querySelectorAll("img")].every((img) => img.complete && img.naturalWidth > 0));
"""
NICE_CASES = [(0.31, 2.3, False), (41.2, 61.19, False), (0, 390, True), (0, 3, True), (5.0, 5.0, False),
              (0.0012, 0.0049, False), (-3.5, 12.0, False)]
NICE_TICKS = f"return {json.dumps(NICE_CASES)}.map(([lo, hi, integer]) => niceTicks(lo, hi, integer).ticks);"


@pytest.fixture(scope="module")
def trained_server(trained_run: Path, tmp_path_factory):
    """A server for the trained run's last.pt, with --runs holding a copy of the run and its report."""
    tmp = tmp_path_factory.mktemp("serve_browser")
    run = tmp / "runs" / "cifar10_fast"
    shutil.copytree(trained_run, run)
    assert cli_main(["report", str(run)]) == 0
    images = []
    for i, arr in enumerate(make_images(np.array([3, 8]), seed=7)):
        images.append(tmp / f"upload{i}.png")
        images[-1].write_bytes(png_bytes(arr))
    with running_server(str(run / "last.pt"), "--runs", str(tmp / "runs")) as srv:
        yield srv, run / "last.pt", images


@pytest.mark.slow
def test_trained_model_matches_predict_after_cam(trained_server, capsys):
    srv, model, images = trained_server
    want = cli_predict(capsys, model, images)
    assert next(iter(want.values()))["precision"] == "fp32"  # the tests' CPU rule (conftest)
    for f in images:  # Grad-CAM switches the model to fp32 / contiguous for its hooks; predict must not change
        assert post(srv.url + "/api/cam", [(f.name, f.read_bytes())]).status_code == 200
    got = post(srv.url + "/api/predict", [(f.name, f.read_bytes()) for f in images]).json()
    assert {g.pop("path"): g for g in got} == want
    info = httpx.get(srv.url + "/api/model").json()
    last_val = [json.loads(r) for r in (model.parent / "log.jsonl").read_text().splitlines() if '"val"' in r][-1]
    assert info["test_top1"] == round(last_val["top1"], 2)  # last.pt's own evaluation, as the page shows it
    assert (info["top1_checkpoint"], info["test_split"]) == ("last.pt", "test")


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="headless Chromium + chromedriver missing (.ci/run installs chromium, chromium-driver)")
def test_page_in_a_real_browser(trained_server, tmp_path: Path, capsys):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    srv, model, images = trained_server
    want = cli_predict(capsys, model, images)
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,900", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    try:
        wait = WebDriverWait(driver, 90)
        driver.get(srv.url + "/")
        wait.until(lambda d: "airnet" in d.find_element(By.ID, "model-name").text)
        assert "last.pt: test top-1" in driver.find_element(By.ID, "model-meta").text  # its checkpoint and split
        # record every state of the Grad-CAM slots: a placeholder first, never a broken image (an <img> with a
        # src that has not loaded)
        driver.execute_script(CAM_WATCH)
        chosen = images[::-1]  # not the names' order: the cards must follow the order the files were chosen in
        driver.find_element(By.ID, "files").send_keys("\n".join(str(f) for f in chosen))
        cards = driver.find_elements(By.CSS_SELECTOR, ".card")
        assert [c.find_element(By.CSS_SELECTOR, ".name").text for c in cards] == [f.name for f in chosen]
        assert driver.execute_script(CAM_SLOTS_OK), "a Grad-CAM slot right after the upload is no placeholder"
        # each card: the top-1 label predict gives, then the Grad-CAM overlay for it
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".top1[data-label]")) == len(images))
        for card in driver.find_elements(By.CSS_SELECTOR, ".card"):
            name = card.find_element(By.CSS_SELECTOR, ".name").text
            assert card.find_element(By.CSS_SELECTOR, ".top1").get_attribute("data-label") == want[name]["label"]
            assert "last.pt" in card.find_element(By.CSS_SELECTOR, ".by").text
        cams = lambda d: d.find_elements(By.CSS_SELECTOR, "img.cam")  # noqa: E731
        wait.until(lambda d: len(cams(d)) == len(images)
                   and all(d.execute_script("return arguments[0].naturalWidth", c) == 32 for c in cams(d)))
        watched = driver.execute_script("return window.camWatch")
        assert watched["broken"] == [] and watched["placeholder"] == [f.name for f in chosen], watched
        # click the second class of the first card: its CAM replaces the predicted class's
        card = driver.find_elements(By.CSS_SELECTOR, ".card")[0]
        second = card.find_elements(By.CSS_SELECTOR, ".topk li")[1]
        label = second.get_attribute("data-label")
        second.click()
        # the card may be drawn anew while its CAM loads: look it up afresh each time (no stale element)
        first = lambda d: d.find_elements(By.CSS_SELECTOR, ".card")[0]  # noqa: E731
        wait.until(lambda d: first(d).find_element(By.CSS_SELECTOR, "img.cam").get_attribute("data-target") == label)
        assert label in first(driver).find_element(By.CSS_SELECTOR, ".cam-caption").text
        SHOTS.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(SHOTS / "serve_page.png"))
        # the runs view: the run, its curves, its report
        driver.find_element(By.ID, "tab-runs").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.run"))
        row = driver.find_element(By.CSS_SELECTOR, "tr.run")
        assert "cifar10_fast" in row.text and "airnet" in row.text and "finished" in row.text
        row.click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-loss polyline.series"))
        assert driver.find_elements(By.CSS_SELECTOR, "#chart-top1 polyline.series")
        # real axes: 4-6 nice ticks with labels and gridlines, and axis titles
        for chart, x_title, y_title in (("loss", "iteration", "loss"), ("top1", "epoch", "test accuracy [%]")):
            yticks = [t.text for t in driver.find_elements(By.CSS_SELECTOR, f"#chart-{chart} text.ytick")]
            assert 4 <= len(yticks) <= 6 and all(t for t in yticks), (chart, yticks)
            assert len(driver.find_elements(By.CSS_SELECTOR, f"#chart-{chart} line.grid")) >= len(yticks)
            titles = [t.text for t in driver.find_elements(By.CSS_SELECTOR, f"#chart-{chart} text.axis-title")]
            assert titles == [x_title, y_title], titles
        ticks = driver.execute_script(NICE_TICKS)
        for (lo, hi, _), got in zip(NICE_CASES, ticks):
            step = got[1] - got[0]
            assert 4 <= len(got) <= 6 and got[0] <= lo and got[-1] >= hi, (lo, hi, got)
            mantissa = step / 10 ** np.floor(np.log10(step))
            assert min(abs(mantissa - m) for m in (1, 2, 2.5, 5)) < 1e-6, (lo, hi, got)
            assert np.allclose(np.diff(got), step)
        frame = driver.find_element(By.ID, "report")
        wait.until(lambda d: frame.is_displayed())
        driver.switch_to.frame(frame)
        wait.until(lambda d: "Per-class metrics" in d.find_element(By.TAG_NAME, "body").text)
        driver.switch_to.default_content()
        assert driver.save_screenshot(str(SHOTS / "serve_runs.png"))
    finally:
        driver.quit()
