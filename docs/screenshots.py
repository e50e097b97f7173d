"""Take the README's screenshots of the MLflow UI with Debian's headless Chromium (playwright drives it).

    trainforge train --model cnn --dataset digits --epochs 12 --json
    trainforge tune --model mlp --dataset digits --epochs 10 --n-trials 9 --study mlp-digits --sampler random --seed 1
    trainforge ui --port 5092 &
    python docs/screenshots.py http://127.0.0.1:5092 EXPERIMENT_ID TRAIN_RUN_ID STUDY_PARENT_RUN_ID

Needs ``pip install playwright`` and ``chromium`` on PATH (``apt-get install chromium``); no browser
download. The clicks (close the assistant panel, expand the study's parent row) are positions in a
1500-pixel-wide window of MLflow 3.17's UI.
"""

import shutil
import sys
from pathlib import Path

from playwright.sync_api import sync_playwright

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def main(base: str, experiment: str, run: str, parent: str, out: Path = Path(__file__).parent / "img") -> None:
    query = "?workflowType=machine_learning"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1500, "height": 640})
        page.goto(f"{base}/#/experiments/{experiment}/runs{query}")
        page.wait_for_timeout(10000)
        page.mouse.click(1463, 35)  # close the assistant panel
        page.wait_for_timeout(1500)
        page.mouse.click(318, 264)  # expand the study's parent run (the newest row)
        page.wait_for_timeout(3000)
        page.screenshot(path=out / "runs_table.png")
        shots = [(820, f"runs/{parent}", "parent_run"), (820, f"runs/{parent}/model-metrics", "parent_metrics"),
                 (740, f"runs/{run}/artifacts/plots/learning_curves.png", "learning_curves")]
        for height, path, name in shots:
            page.set_viewport_size({"width": 1500, "height": height})
            page.goto(f"{base}/#/experiments/{experiment}/{path}{query}")
            page.wait_for_timeout(8000)
            page.screenshot(path=out / f"{name}.png")
        browser.close()


if __name__ == "__main__":
    main(*sys.argv[1:5])
