"""API documentation that works offline, with examples that score.

``/docs`` (Swagger UI) and ``/redoc`` load their JavaScript and CSS from this service, from the
files the ``fastapi-offline`` package ships (Swagger UI: Apache 2.0; ReDoc: MIT; their licence
headers are kept in the files), never from a CDN. The OpenAPI document is built once and, per
set of loaded model versions, completed with each table model's own input example (the records
logged with it at training): every loaded model gets a score route of its own whose example is
valid for it, and the generic routes' examples are the first model's, so "Try it out" answers
200.
"""

from __future__ import annotations

import copy
import logging
from importlib.resources import files
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from service.model import ServedModel
from service.scoring.v2_protocol import tensor_type
from training.preprocessing.tabular import NUMERIC, ColumnSpec

log = logging.getLogger(__name__)

ASSETS_URL = "/docs-assets"
SCORE = "/v1/models/{name}/score"
INVOCATIONS = "/v1/models/{name}/invocations"
INFER = "/v2/models/{name}/infer"
_EXAMPLE_ROWS = 3
# The docs pages may load nothing from elsewhere: ReDoc's bundle would fetch its footer logo
# from a CDN, and the browser refuses it instead of trying the network.
_LOCAL_ONLY = {"Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline'; "
               "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
               "worker-src 'self' blob:; connect-src 'self'"}


def assets_dir() -> str:
    """The folder of Swagger UI's and ReDoc's files, as the ``fastapi-offline`` package ships
    them: ``swagger-ui-bundle.js``, ``swagger-ui.css``, ``redoc.standalone.js``,
    ``favicon.png``."""
    return str(files("fastapi_offline") / "static")


def install(app: FastAPI) -> None:
    """Serve ``/docs``, ``/docs/oauth2-redirect`` and ``/redoc`` from local assets, and the
    OpenAPI document with the loaded models' examples (the app is created with
    ``docs_url=None, redoc_url=None``)."""
    app.mount(ASSETS_URL, StaticFiles(directory=assets_dir()), name="docs-assets")
    redirect = "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{redirect}",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters)
        page.headers.update(_LOCAL_ONLY)
        return page

    @app.get(redirect, include_in_schema=False)
    async def swagger_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(openapi_url=f"{root}{app.openapi_url}",
                              title=f"{app.title} - ReDoc",
                              redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
                              redoc_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
                              with_google_fonts=False)
        page.headers.update(_LOCAL_ONLY)
        return page

    cache: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if "base" not in cache:
            cache["base"] = get_openapi(title=app.title, version=app.version,
                                        description=app.description, routes=app.routes)
        store = getattr(app.state, "store", None)
        models = [m for m in (store.loaded() if store is not None else [])
                  if m.inputs is not None]
        key = tuple((m.name, m.source.version) for m in models)
        if cache.get("key") != key:
            cache["key"], cache["doc"] = key, with_examples(cache["base"], models)
        return cache["doc"]

    app.openapi = openapi  # type: ignore[method-assign]


def input_example(model: ServedModel, rows: int = _EXAMPLE_ROWS) -> list[dict[str, Any]]:
    """Up to ``rows`` JSON-ready records for ``model``: the input example logged with it, or,
    when it has none, one record of training medians and first categories."""
    frame = _logged_example(model)
    columns = model.inputs.columns
    if frame is None or any(c not in frame.columns for c in columns):
        specs = model.scorer.preprocessor_.columns_
        frame = pd.DataFrame([{s.name: _first_value(s) for s in specs}])
    frame = frame[columns].head(rows).astype(object)
    return [{c: _plain(v) for c, v in r.items()} for r in frame.to_dict(orient="records")]


def _first_value(spec: ColumnSpec) -> Any:
    """A column's example value: its training median, or its first category (a boolean
    column's as a boolean, as JSON and a v2 BOOL tensor carry it)."""
    if spec.kind == NUMERIC:
        return spec.median
    if not spec.categories:
        return None
    first = spec.categories[0]
    return first == "True" if spec.dtype == "bool" else first


def _logged_example(model: ServedModel) -> pd.DataFrame | None:
    """The input example in the registered model's folder (``<folder>/artifacts/detector`` is
    the detector), or None."""
    folder = model.path.parent.parent
    if not (folder / "MLmodel").is_file():
        return None
    try:
        from mlflow.models import Model

        example = Model.load(str(folder)).load_input_example(str(folder))
    except Exception as e:  # an example that does not load only costs the docs their example
        log.warning("%s: cannot read its input example: %s", model.name, e)
        return None
    return example if isinstance(example, pd.DataFrame) else None


def _plain(v: Any) -> Any:
    """A value as JSON writes it: None for missing, Python scalars for numpy ones."""
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
        return None
    return v.item() if isinstance(v, np.generic) else v


def with_examples(base: dict[str, Any], models: list[ServedModel]) -> dict[str, Any]:
    """``base`` with a score route per model and examples from the models' input examples."""
    doc = copy.deepcopy(base)
    if not models:
        return doc
    paths = doc["paths"]
    examples = {m.name: input_example(m) for m in models}
    first = models[0]
    rows = examples[first.name]
    specs = {s.name: s for s in first.scorer.preprocessor_.columns_}
    generic = {SCORE: {"records": rows},
               INVOCATIONS: {"dataframe_split": {"columns": list(rows[0]),
                                                 "data": [list(r.values()) for r in rows]}},
               INFER: {"inputs": [{"name": c, "shape": [len(rows)],
                                   "datatype": tensor_type(specs[c]),
                                   "data": [r[c] for r in rows]} for c in rows[0]]}}
    for path, example in generic.items():
        op = paths.get(path, {}).get("post")
        if op is not None:
            _set_example(op, example)
            for p in op.get("parameters", []):
                if p["name"] == "name":
                    p["example"] = first.name
    score = paths.get(SCORE, {}).get("post")
    if score is None:
        return doc
    for m in models:
        op = copy.deepcopy(score)
        op["parameters"] = [p for p in op.get("parameters", []) if p["name"] != "name"]
        op["operationId"] = f"{op.get('operationId', 'score')}__{_identifier(m.name)}"
        op["summary"] = f"score records with {m.name} (version {m.source.version})"
        op["tags"] = ["loaded models"]
        _set_example(op, {"records": examples[m.name]})
        paths[f"/v1/models/{quote(m.name, safe='')}/score"] = {"post": op}
    return doc


def _set_example(op: dict[str, Any], example: dict[str, Any]) -> None:
    content = op.get("requestBody", {}).get("content", {}).get("application/json")
    if content is not None:
        content.pop("examples", None)
        content["example"] = example


def _identifier(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)
