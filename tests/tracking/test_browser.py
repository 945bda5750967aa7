"""TensorBoard in a real browser: headless Chromium shows a tiny run's scalars, images and HParams.

Needs Debian's `chromium` and `chromium-driver` (`make test` installs them when run as root)
and selenium (in the dev extra). The screenshot goes to the test's tmp dir; to refresh the
README's from a real run (any run dir with mistakes in its validation set):

    MNIST_LAB_TB_RUN=outputs/<date>/<time> MNIST_LAB_SCREENSHOT=docs/tensorboard.png \\
        .venv/bin/pytest tests/tracking/test_browser.py
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from PIL import Image

from tests.conftest import read_metrics

pytestmark = pytest.mark.browser

CHROMIUM, CHROMEDRIVER = "chromium", "chromedriver"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
)
WINDOW = (1400, 1000)
TIMEOUT_S = 90  # for TensorBoard to start and load, and for each dashboard to render

# Every element of the page, through the shadow roots of TensorBoard's Polymer components.
DEEP = """
const deep = (root) => {
  const found = [];
  const walk = (node) => {
    if (node.shadowRoot) walk(node.shadowRoot);
    for (const child of node.children || []) { found.push(child); walk(child); }
  };
  walk(root);
  return found;
};
"""
# Tags of the scalar cards whose chart has drawn a line.
DRAWN_SCALAR_CARDS = (
    DEEP
    + """
return deep(document).filter(card => card.localName === 'tf-scalar-card' && deep(card).some(
  p => p.localName === 'path' && p.classList.contains('line') && p.getAttribute('d'))
).map(card => card.tag);
"""
)
# [tag, width, height] of each image card whose image has loaded.
LOADED_IMAGES = (
    DEEP
    + """
return deep(document).filter(card => card.localName === 'tf-image-loader').flatMap(
  card => deep(card).filter(img => img.localName === 'img' && img.complete && img.naturalWidth)
                    .map(img => [card.tag, img.naturalWidth, img.naturalHeight]));
"""
)
# Sets the dashboard checkbox labelled arguments[0] to arguments[1]; false if there is none.
SET_CHECKBOX = (
    DEEP
    + """
const [label, checked] = arguments;
const box = deep(document).find(e => e.localName === 'paper-checkbox'
                                     && e.textContent.includes(label));
if (box && box.checked !== checked) box.click();
return Boolean(box);
"""
)
# The text of the HParams table view (one row per run).
HPARAMS_TABLE_TEXT = (
    DEEP
    + """
const view = deep(document).find(e => e.localName === 'tf-hparams-table-view');
const leaves = view ? deep(view).filter(e => !e.children.length && e.localName !== 'style') : [];
return leaves.map(e => e.textContent.trim()).join(' | ');
"""
)


def missing_browser_parts() -> dict[str, str]:
    """{what is missing: how to install it}."""
    apt = "sudo apt-get install chromium chromium-driver (`make test` does it when run as root)"
    missing = {name: apt for name in (CHROMIUM, CHROMEDRIVER) if shutil.which(name) is None}
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing["the selenium package"] = ".venv/bin/pip install -e '.[dev]'"
    return missing


@pytest.fixture(scope="module")
def browser():
    missing = missing_browser_parts()
    if missing:
        how = "; ".join(dict.fromkeys(missing.values()))
        pytest.skip(f"{' and '.join(missing)} missing; install: {how}.")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which(CHROMEDRIVER)))
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def run_dir(request) -> Path:
    """The tiny test run, or the run named by $MNIST_LAB_TB_RUN (for the README screenshot)."""
    chosen = os.environ.get("MNIST_LAB_TB_RUN")
    return Path(chosen).resolve() if chosen else request.getfixturevalue("tensorboard_run")


def fetch(url: str) -> str:
    """The body at ``url``, or "" if the server does not answer (yet)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.read().decode()
    except OSError:
        return ""


@pytest.fixture(scope="module")
def tensorboard_url(run_dir, tmp_path_factory):
    """`tensorboard --logdir <run dir>` on 127.0.0.1 at a port it picks; its URL once it has
    loaded the run's scalars and images."""
    log = tmp_path_factory.mktemp("tensorboard_server") / "tensorboard.log"
    command = [
        sys.executable,
        "-m",
        "tensorboard.main",
        "--logdir",
        str(run_dir),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
    ]  # `tensorboard ...`, with this Python
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        url = wait_for(lambda: served_url(server, log), "TensorBoard to print its URL", log)
        for plugin, tag in (("scalars", "val/acc"), ("images", "val/misclassified")):
            wait_for(
                lambda p=plugin, t=tag: t in fetch(f"{url}data/plugin/{p}/tags"),
                f"TensorBoard to load {tag} from {run_dir}",
                log,
            )
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


def served_url(server: subprocess.Popen, log: Path) -> str | None:
    if server.poll() is not None:
        raise AssertionError(f"tensorboard exited {server.returncode}:\n{log.read_text()[-2000:]}")
    match = re.search(r"at (http://127\.0\.0\.1:\d+/)", log.read_text())
    return match[1] if match else None


def wait_for(condition, what: str, log: Path | None = None):
    """``condition()``'s first truthy value, polled until TIMEOUT_S."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.5)
    details = f"\n{log.read_text()[-2000:]}" if log else ""
    raise AssertionError(f"gave up after {TIMEOUT_S}s waiting for {what}{details}")


def open_dashboard(driver, url: str, fragment: str) -> None:
    driver.get("about:blank")  # a fresh page, so earlier dashboards' elements are gone
    driver.get(f"{url}#{fragment}")


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory):
    """Collects each dashboard's screenshot; at the end writes them, one under the other, to
    $MNIST_LAB_SCREENSHOT if set, else to the test's tmp dir."""
    pages: list[Image.Image] = []
    yield pages
    if not pages:
        return
    target = Path(os.environ.get("MNIST_LAB_SCREENSHOT") or tmp_path_factory.mktemp("screenshot") / "tensorboard.png")
    sheet = Image.new("RGB", (max(p.width for p in pages), sum(p.height for p in pages)), "white")
    for i, page in enumerate(pages):
        sheet.paste(page, (0, sum(p.height for p in pages[:i])))
    temporary = target.with_name(f".{target.name}.tmp")
    sheet.save(temporary, format="PNG", optimize=True)
    os.replace(temporary, target)
    print(f"screenshot: {target}")


def screenshot(driver, checkbox: tuple[str, bool]) -> Image.Image:
    """The page, after setting a dashboard option that makes it read better (if it is there:
    the test does not depend on it)."""
    if driver.execute_script(SET_CHECKBOX, *checkbox):
        time.sleep(2)  # let the charts or images redraw
    return Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")


def test_scalars_dashboard_draws_train_loss_and_val_acc(browser, tensorboard_url, screenshots):
    open_dashboard(browser, tensorboard_url, "scalars&tagFilter=%5E(train%2Floss%7Cval%2Facc)%24")
    wanted = {"train/loss", "val/acc"}
    wait_for(
        lambda: wanted <= set(browser.execute_script(DRAWN_SCALAR_CARDS)),
        "the scalars dashboard to draw train/loss and val/acc",
    )
    # a few val/acc points make outlier-trimmed axes useless
    screenshots.append(screenshot(browser, ("Ignore outliers in chart scaling", False)))


def test_images_dashboard_shows_the_misclassified_grid(browser, tensorboard_url, screenshots):
    open_dashboard(browser, tensorboard_url, "images&tagFilter=misclassified")

    def loaded() -> dict[str, tuple[int, int]]:
        images = {tag: (w, h) for tag, w, h in browser.execute_script(LOADED_IMAGES)}
        return images if "val/misclassified" in images else {}

    images = wait_for(loaded, "the images dashboard to show val/misclassified")
    width, height = images["val/misclassified"]
    assert width >= 8 * 28 and height >= 28, images  # a grid of digits, not an icon
    screenshots.append(screenshot(browser, ("Show actual image size", True)))


def test_hparams_dashboard_lists_the_run_with_its_final_metrics(browser, tensorboard_url, run_dir):
    metrics = read_metrics(run_dir)
    config = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    # One row: the run (named after its folder under the logdir: "tensorboard"), the first few
    # hyperparameters in name order (batch_size always among them) and the final metrics, with
    # numbers written as JavaScript's toPrecision(5) does, which is Python's "#.5g".
    row = [
        "tensorboard",
        f"{config.data.batch_size:#.5g}",
        f"{metrics['best_val_acc']:#.5g}",
        f"{metrics['test_acc']:#.5g}",
    ]
    open_dashboard(browser, tensorboard_url, "hparams")

    def cells() -> list[str]:
        found = browser.execute_script(HPARAMS_TABLE_TEXT).split(" | ")
        return found if set(row) <= set(found) else []

    wait_for(cells, f"the HParams table to show a row with {row}")
