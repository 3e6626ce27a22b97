"""The README's and the docs' pictures, made from a real `cifarkit demo` run so they stay true.

    .venv/bin/python scripts/readme_images.py [--demo DIR] [--out docs/images]

Runs the demo into DIR (default: a temporary folder; an existing demo folder is reused), then
writes into --out: the sample grid, one augmented training batch, the training curves, the
confusion matrix, the highest-loss errors, a Grad-CAM figure (all copied from the demo's own
outputs), and screenshots of the HTML report and of the `cifarkit serve` page with three test
images uploaded (headless Chromium, via Selenium for the page). Every image is shrunk to at
most 900 px wide and palette-quantised to keep the repository small. `docs/images/README.md`
records when, on which CPU and from which demo numbers they were made.

Needs the `[dev]` extra (selenium, grad-cam, FastAPI) and Debian's chromium + chromium-driver.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
MAX_WIDTH = 900
# (file in --out, file in the demo folder, what it shows)
COPIES = [
    ("samples.png", "samples_per_class.png", "the sample grid: 10 images per class (`cifarkit data show`)"),
    ("train_batch.png", "run/train_batch.png", "one augmented training batch, as the model sees it"),
    ("curves.png", "run/curves.png", "training curves (`cifarkit plot`)"),
    ("confusion_matrix.png", "analysis/confusion_matrix.png", "confusion matrix (`cifarkit analyze`)"),
    ("errors.png", "analysis/misclassified.png", "highest-loss errors with both probabilities (`cifarkit analyze`)"),
]


def shrink(src: Path, dst: Path) -> None:
    """Copy `src` to `dst` as a palette PNG at most MAX_WIDTH wide."""
    im = Image.open(src).convert("RGB")
    if im.width > MAX_WIDTH:
        im = im.resize((MAX_WIDTH, round(im.height * MAX_WIDTH / im.width)), Image.LANCZOS)
    im.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(dst, optimize=True)


def chromium() -> tuple[str, str]:
    """(chromium, chromedriver) paths, or exit naming the packages."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        sys.exit("error: needs chromium and chromedriver (Debian: apt-get install chromium chromium-driver)")
    return browser, driver


def screenshot_report(report: Path, out: Path, tmp: Path) -> None:
    browser, _ = chromium()
    shot = tmp / "report_full.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={tmp / 'profile-report'}", "--hide-scrollbars", "--window-size=1100,1500",
                    f"--screenshot={shot}", report.as_uri()], capture_output=True, timeout=180, check=True)
    shrink(shot, out)


def screenshot_serve(demo: Path, out_page: Path, out_runs: Path, tmp: Path) -> None:
    """The serve page with three uploads and their Grad-CAMs, then the runs view of the demo."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from cifarkit.serve.launch import running_server

    browser, driver_path = chromium()
    images = sorted((demo / "export" / "test").glob("*/*.png"))[::100][:3]
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,900", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--hide-scrollbars", f"--user-data-dir={tmp / 'profile-serve'}"):
        opts.add_argument(arg)
    with running_server(str(demo / "run" / "best.pt"), "--runs", str(demo)) as srv:
        driver = webdriver.Chrome(service=Service(driver_path), options=opts)
        try:
            wait = WebDriverWait(driver, 120)
            driver.get(srv.url + "/")
            wait.until(lambda d: d.find_element(By.ID, "model-name").text.strip())
            driver.find_element(By.ID, "files").send_keys("\n".join(str(f) for f in images))
            cams = lambda d: d.find_elements(By.CSS_SELECTOR, "img.cam")  # noqa: E731
            wait.until(lambda d: len(cams(d)) == len(images)
                       and all(d.execute_script("return arguments[0].naturalWidth", c) > 0 for c in cams(d)))
            driver.save_screenshot(str(tmp / "serve_page.png"))
            driver.find_element(By.ID, "tab-runs").click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "tr.run"))
            driver.find_element(By.CSS_SELECTOR, "tr.run").click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#chart-top1 polyline.series"))
            driver.save_screenshot(str(tmp / "serve_runs.png"))
        finally:
            driver.quit()
    shrink(tmp / "serve_page.png", out_page)
    shrink(tmp / "serve_runs.png", out_runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo", type=Path, default=None, help="a demo folder to reuse, or where to run the demo")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    a = ap.parse_args()
    from cifarkit.demo import run_demo
    from cifarkit.infer.device import cpu_kind, cpu_model

    tmp = Path(tempfile.mkdtemp(prefix="cifarkit-images-"))
    demo = a.demo or tmp / "demo"
    if not (demo / "run" / "best.pt").is_file():
        run_demo(demo)
    a.out.mkdir(parents=True, exist_ok=True)
    made = []
    for name, src, what in COPIES:
        shrink(demo / src, a.out / name)
        made.append((name, what))
    cam = sorted((demo / "cam").glob("*_cam.png"))
    if cam:
        shrink(cam[0], a.out / "cam.png")
        made.append(("cam.png", "a Grad-CAM figure: the class explained, its probability and the true label"))
    screenshot_report(demo / "run" / "report.html", a.out / "report.png", tmp)
    made.append(("report.png", "the one-file HTML report (`cifarkit report`), its top"))
    screenshot_serve(demo, a.out / "serve.png", a.out / "serve_runs.png", tmp)
    made += [("serve.png", "`cifarkit serve`: three test images uploaded, each with its Grad-CAM"),
             ("serve_runs.png", "`cifarkit serve --runs`: a run's curves and report")]
    summary = [json.loads(x) for x in (demo / "run" / "log.jsonl").read_text().splitlines() if '"summary"' in x]
    top1 = summary[-1].get("final_top1") if summary else None
    lines = [
        "# Pictures of real outputs",
        "",
        f"Made by `scripts/readme_images.py` from one `cifarkit demo` run on "
        f"{datetime.date.today().isoformat()}, {cpu_model()} ({cpu_kind()}): the demo's airnet, trained for 5 epochs "
        f"on the 2,000-image sample, reached {top1:.2f}% top-1 on the sample's 500 test images (last.pt)."
        if top1 is not None else "Made by `scripts/readme_images.py` from one `cifarkit demo` run.",
        "Rerun it after a change to what these show; the README and the docs' home page include them.",
        "",
        *[f"- `{n}`: {w}" for n, w in made],
    ]
    (a.out / "README.md").write_text("\n".join(lines) + "\n")
    shutil.rmtree(tmp, ignore_errors=True)
    for n, _ in made:
        print(f"wrote {a.out / n} ({(a.out / n).stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
