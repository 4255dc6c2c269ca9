"""MLflow's web UI in a real headless browser (Chromium through Playwright), for the UI tests and
the docs' screenshots: what a researcher sees of a sweep.

Playwright drives the system's Chromium (``apt-get install chromium``: /usr/bin/chromium, or
``RPS_CHROMIUM``); it never downloads a browser. :func:`missing` says why it cannot run.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import quote

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1500, "height": 950}
TRAINING = "workflowType=machine_learning"  # the UI's "Model training" view (it opens on GenAI otherwise)
LOADED = 15_000  # ms a page gets to load before a check gives up


def chromium() -> Optional[str]:
    path = os.environ.get("RPS_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    return path if path and Path(path).is_file() else None


def missing() -> Optional[str]:
    """Why the browser checks cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pip install -e '.[test]')"
    if chromium() is None:
        return "no Chromium (apt-get install -y chromium, or set RPS_CHROMIUM)"
    return None


@contextmanager
def browser_page() -> Iterator:
    """A fresh page (a new profile: the UI's own defaults) in headless Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium(), args=FLAGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(LOADED)
            yield page
        finally:
            browser.close()


def _close_assistant(page) -> None:
    """The "MLflow Assistant" side panel opens on a fresh profile and takes a third of the width."""
    button = page.get_by_role("button", name="Close")
    if button.count():
        button.first.click()


def compare_axes(page, base: str, experiment_id: str, run_ids: list[str]) -> list[str]:
    """The axes Compare's parallel-coordinates plot opens with, for these runs."""
    page.goto(f"{base}/#/compare-runs?runs={quote(json.dumps(run_ids))}&experiments={quote(json.dumps([experiment_id]))}"
              f"&{TRAINING}")
    page.locator("text.axis-title").first.wait_for()
    _close_assistant(page)
    return page.locator("text.axis-title").all_text_contents()  # (SVG: no inner text)


def chart_view(page, base: str, experiment_id: str) -> None:
    """The experiment's runs in the chart view, the sweep's parent expanded to show its children."""
    page.goto(f"{base}/#/experiments/{experiment_id}/runs?{TRAINING}&compareRunsMode=CHART")
    page.get_by_text("Model metrics").first.wait_for()
    _close_assistant(page)
    expand = page.locator('button[data-component-id$="runnamecellrenderer.tsx_46"]')
    if expand.count():
        expand.first.click()
    page.wait_for_timeout(1500)


def card(page, title: str):
    """The chart card titled ``title`` (a metric or an image key)."""
    return page.locator("[data-testid='experiment-view-compare-runs-card']").filter(
        has=page.locator(f"h4[title='{title}']")).first


def show_card(page, title: str) -> None:
    """Filter the chart view to the cards whose title contains ``title``."""
    page.fill("input[placeholder='Search metric charts']", title)
    page.wait_for_timeout(1000)


def hide_run_params(page, title: str) -> None:
    """Switch off the image card's "Show run parameters" (card menu > Configure), which MLflow
    leaves on: every param of every run printed above its image."""
    card(page, title).locator("[data-testid='experiment-view-compare-runs-card-menu']").click()
    page.get_by_role("menuitem", name="Configure").click()
    page.get_by_role("switch", name="Show run parameters").click()
    page.get_by_role("button", name="Save changes").click()
    page.wait_for_timeout(1000)


def visible_images(page, title: str) -> list[dict]:
    """The images a card shows, loaded and inside the card: their size and how much of each is visible."""
    box = card(page, title).bounding_box()
    found = []
    for image in card(page, title).locator("img").all():
        loaded = image.evaluate("img => img.complete && img.naturalWidth > 0")
        shown = image.bounding_box()
        if not loaded or not shown or not box:
            continue
        bottom = min(shown["y"] + shown["height"], box["y"] + box["height"])
        found.append({"width": shown["width"], "height": shown["height"],
                      "visible": max(0.0, bottom - shown["y"]) / max(shown["height"], 1.0)})
    return found


def fullscreen_images(page, title: str) -> list[dict]:
    """The loaded images of a card opened full screen: where each is drawn."""
    card(page, title).locator("button[data-component-id='fullscreen_button_chartcard']").click()
    dialog = page.get_by_role("dialog")
    dialog.locator("img").first.wait_for()
    page.wait_for_timeout(1000)
    return [image.bounding_box() for image in dialog.locator("img").all()
            if image.evaluate("img => img.complete && img.naturalWidth > 0")]


def preview_image(page, title: str) -> dict:
    """Click a card's image: MLflow previews it at full size; returns where it is drawn."""
    card(page, title).locator("img").first.click()
    preview = page.locator(".rc-image-preview-img")
    preview.wait_for()
    page.wait_for_timeout(1000)
    return preview.bounding_box()


def close_preview(page) -> None:
    """Escape, and wait until the preview is gone: a busy machine can take a while, and text typed
    meanwhile goes to the search field under the preview, whose filter the page then never applies."""
    page.keyboard.press("Escape")
    page.locator(".rc-image-preview-img").wait_for(state="hidden")
