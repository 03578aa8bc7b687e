"""The MLflow UI as a user sees it, in a real browser (headless Chromium through Playwright).

``anomaly ui`` on a store with an AE and a VAE run of one experiment: the link it prints opens
the runs table (not the GenAI traces overview), a run's metrics are grouped in sections, the
loss curve every kind shares is drawn for both runs, and the compare view shows the plots the
runs have in common. Screenshots go to ``$ANOMALY_UI_SCREENSHOTS`` (or the test's folder).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipelines.cli.main import main
from pipelines.demo.run import write_demo_data
from tests.servers import free_port, stop_process, wait_http

CHROMIUM = os.environ.get("ANOMALY_CHROMIUM", "/usr/bin/chromium")
playwright = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).is_file() and shutil.which("chromium") is None,
                                reason="needs Chromium (apt-get install chromium)")
EXPERIMENT = "ui-breast-cancer"


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """The demo table's AE and VAE in one experiment, and ``anomaly ui`` serving the store."""
    folder = tmp_path_factory.mktemp("ui-store")
    csv = write_demo_data(folder)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    for kind in ("ae", "vae"):
        assert main(["train", "--data", str(csv), "--kind", kind, "--name", "ui-bc",
                     "--id-column", "id", "--label-column", "malignant", "--epochs", "6",
                     "--experiment", EXPERIMENT, "--tracking-uri", uri]) == 0
    port = free_port()
    log = open(folder / "ui.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "ui", "--port", str(port),
                             "--tracking-uri", uri], cwd=folder, stdout=log,
                            stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_WORKERS": "1"})
    try:
        wait_http(f"http://127.0.0.1:{port}/health", proc, timeout=120)
        client = MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(EXPERIMENT)
        runs = {r.data.tags["kind"]: r for r in client.search_runs([exp.experiment_id])}
        yield {"base": f"http://127.0.0.1:{port}", "printed": (folder / "ui.log").read_text(),
               "experiment": exp, "runs": runs}
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture(scope="module")
def page(ui):
    from playwright.sync_api import sync_playwright

    executable = CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable,
                                    args=["--no-sandbox", "--disable-background-networking"])
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = os.environ.get("ANOMALY_UI_SCREENSHOTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _close_assistant(pg) -> None:
    """Close the assistant panel, if open, so that the screenshots show the page itself."""
    close = pg.locator("[data-component-id='mlflow.assistant.chat_panel.close']")
    if close.count():
        close.first.click()
        pg.wait_for_timeout(500)


def _settle(pg, ms: int = 2500) -> None:
    """Let the charts finish drawing (the page polls, so it never goes network-idle)."""
    pg.wait_for_timeout(ms)


def test_printed_link_opens_the_runs_table(ui, page, shots):
    exp = ui["experiment"]
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    link = re.search(rf"{EXPERIMENT}\s+(http\S+)", ui["printed"])
    assert link, ui["printed"]
    assert link.group(1) == (f"{ui['base']}/#/experiments/{exp.experiment_id}/runs"
                             "?workflowType=machine_learning")
    page.goto(link.group(1))
    for kind in ("ae", "vae"):
        page.get_by_role("link", name=f"ui-bc-{kind}").first.wait_for()
    _settle(page)
    page.screenshot(path=str(shots / "1-runs-table.png"))
    text = page.inner_text("body")
    assert "2 matching runs" in text
    assert "Run Name" in text and "Dataset" in text
    for genai in ("Detect Issues", "Token Usage", "No data available for the selected time"):
        assert genai not in text
    assert "/runs" in page.url and "workflowType=machine_learning" in page.url


def test_run_metrics_are_grouped_and_the_shared_loss_curve_is_drawn(ui, page, shots):
    exp, vae = ui["experiment"], ui["runs"]["vae"]
    page.goto(f"{ui['base']}/#/experiments/{exp.experiment_id}/runs/{vae.info.run_id}"
              "/model-metrics?workflowType=machine_learning")
    page.get_by_text("calibration", exact=True).first.wait_for()
    _close_assistant(page)
    _settle(page)
    page.screenshot(path=str(shots / "2-run-metrics.png"))
    lines = page.inner_text("body").splitlines()
    sections = [line for line in lines if line in ("calibration", "eval", "fit", "Model metrics")]
    assert sections[-4:] == ["calibration", "eval", "fit", "Model metrics"], sections
    page.get_by_placeholder("Search metric charts").fill("val_")
    page.get_by_text("val_recon_mse", exact=True).first.wait_for()
    _settle(page)
    lines = page.inner_text("body").splitlines()
    assert {"val_recon_mse", "val_neg_elbo"} <= set(lines), lines

    # The experiment's charts: the shared curve holds both runs.
    page.goto(f"{ui['base']}/#/experiments/{exp.experiment_id}/runs"
              "?workflowType=machine_learning&compareRunsMode=CHART")
    page.get_by_placeholder("Search metric charts").fill("val_recon_mse")
    page.get_by_text("val_recon_mse", exact=True).first.wait_for()
    _settle(page)
    page.screenshot(path=str(shots / "3-shared-loss-curve.png"))
    body = page.inner_text("body")
    assert "ui-bc-ae" in body and "ui-bc-vae" in body


def test_compare_view_shows_the_common_plots(ui, page, shots):
    exp, runs = ui["experiment"], ui["runs"]
    ids = json.dumps([runs["vae"].info.run_id, runs["ae"].info.run_id])
    page.goto(f"{ui['base']}/#/compare-runs?runs={ids}&experiments="
              f"{json.dumps([exp.experiment_id])}&workflowType=machine_learning")
    page.get_by_text("loss_curves.png", exact=True).first.wait_for()
    _close_assistant(page)
    text = page.inner_text("body")
    assert "No common artifacts" not in text
    for name in ("loss_curves.png", "roc_pr.png", "scores_recon.png"):
        assert name in text
    page.get_by_text("loss_curves.png", exact=True).first.click(force=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        shown = page.locator("img[src*='loss_curves.png'], img[src^='blob:']").count()
        if shown >= 2:
            break
        page.wait_for_timeout(500)
    page.get_by_text("Artifacts", exact=True).first.scroll_into_view_if_needed()
    _settle(page)
    page.screenshot(path=str(shots / "4-compare-plots.png"))
    assert shown >= 2, "the loss curves of both runs, side by side"
