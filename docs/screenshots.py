"""The README's two MLflow screenshots, taken in a real browser from a running `mlflow ui`.

    pip install playwright          # the Python driver only; the browser is Debian's chromium
    mlflow ui --backend-store-uri sqlite:///mlflow.db --port 5000 &
    python docs/screenshots.py http://127.0.0.1:5000/#/experiments/1?workflowType=machine_learning

1. docs/mlflow-runs.png: the link `compare` prints, as it opens: the runs table.
2. docs/mlflow-charts.png: one click on the chart view, then "Group by" the tag `model`: the
   learning curves of every model, each a line (mean over seeds) with a band.
"""
import sys
from pathlib import Path

from PIL import Image
from playwright.sync_api import sync_playwright

DOCS = Path(__file__).parent
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]


def small_png(page, name: str) -> None:
    """A screenshot at 3/4 size in 128 colours: small enough to keep in git."""
    full = DOCS / f".{name}.full.png"
    page.screenshot(path=str(full))
    image = Image.open(full).convert("RGB")
    image = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.LANCZOS)
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(DOCS / name, optimize=True)
    full.unlink()


def main(url: str) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium",
                                             args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 860})
        page.goto(url)
        page.wait_for_timeout(6000)
        close_assistant = page.locator('[aria-label="Close"]').first
        if close_assistant.is_visible():
            close_assistant.click()
        small_png(page, "mlflow-runs.png")
        page.locator("label:has(input[value=CHART])").click()  # the chart view
        page.wait_for_timeout(3000)
        page.get_by_text("Group by", exact=True).click()
        page.get_by_text("model", exact=True).first.click()
        page.keyboard.press("Escape")
        page.wait_for_timeout(3000)
        small_png(page, "mlflow-charts.png")
        browser.close()


if __name__ == "__main__":
    main(sys.argv[1])
