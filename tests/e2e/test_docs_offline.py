"""/docs and /redoc in headless Chromium with every request off loopback refused: the pages render
from the service's own assets, and "Try it out" on a model's score route answers 200.

Needs Debian's Chromium (/usr/bin/chromium) and the playwright package; skipped without them.
The same pages' HTML and assets are checked without a browser in
tests/service/test_protocols.py.
"""

from __future__ import annotations

import shutil

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
playwright = pytest.importorskip("playwright.sync_api")
if not shutil.which(CHROMIUM):
    pytest.skip("no Chromium at /usr/bin/chromium", allow_module_level=True)


@pytest.fixture(scope="module")
def svc(svc_registry, service_factory):
    return service_factory(["models:/bc@champion"], svc_registry.uri)


@pytest.fixture()
def offline_page(svc, tmp_path):
    """A page whose every request to anything but the service is refused (and recorded)."""
    refused: list[str] = []

    def only_loopback(route):
        if route.request.url.startswith(svc.url):
            return route.continue_()
        refused.append(route.request.url)
        return route.abort("internetdisconnected")

    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-background-networking", "--disable-gpu"])
        context = browser.new_context()
        context.route("**/*", only_loopback)
        page = context.new_page()
        yield page, refused
        context.close()
        browser.close()


def test_swagger_ui_renders_and_try_it_out_answers_200(svc, offline_page, tmp_path):
    page, refused = offline_page
    page.goto(f"{svc.url}/docs")
    page.wait_for_selector(".swagger-ui .opblock", timeout=30_000)
    op = page.locator(".opblock", has=page.locator("[data-path='/v1/models/bc/score']"))
    op.locator(".opblock-summary").first.click()
    op.locator("button.try-out__btn").click()
    body = op.locator("textarea.body-param__text").input_value()
    assert '"records"' in body and '"mean_radius"' in body
    op.locator("button.execute").click()
    status = op.locator(".live-responses-table tr.response .response-col_status").first
    status.wait_for(timeout=30_000)
    page.screenshot(path=str(tmp_path / "docs.png"), full_page=False)
    assert status.inner_text().strip() == "200"
    assert "n_anomalies" in op.locator(".live-responses-table .microlight").first.inner_text()
    assert refused == []


def test_redoc_renders(svc, offline_page):
    page, refused = offline_page
    page.goto(f"{svc.url}/redoc")
    page.locator("h1").first.wait_for(timeout=30_000)
    assert "ae-anomaly scoring service" in page.locator("h1").first.inner_text()
    assert page.get_by_text("score records with bc (version 1)").count() >= 1
    assert refused == []
