"""DirectRoute: the same answers and the same OpenAPI description as FastAPI's own routes."""

from __future__ import annotations

from typing import Annotated

import pytest
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Security
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader
from fastapi.testclient import TestClient
from pydantic import BaseModel

from service import errors
from service.app import create_app
from service.routes.direct import DirectRoute
from service.settings import Settings

KEY = APIKeyHeader(name="X-API-Key", auto_error=False)


async def need_key(request: Request, key: Annotated[str | None, Security(KEY)] = None) -> None:
    if key != "secret":
        from training.errors import AuthError

        raise AuthError("unknown API key")


async def app_name(request: Request) -> str:
    return request.app.title


class Body(BaseModel):
    x: int


def _app(route_class: type[APIRoute]) -> FastAPI:
    router = APIRouter(prefix="/m", route_class=route_class, dependencies=[Depends(need_key)])

    @router.post("/{name}/score")
    async def score(name: str, request: Request, title: Annotated[str, Depends(app_name)],
                    strict: Annotated[bool | None, Query(description="strict?")] = None,
                    explain: Annotated[bool, Query(description="explain?")] = False,
                    limit: int = 10) -> JSONResponse:
        body = await request.body()
        return JSONResponse({"name": name, "title": title, "strict": strict, "explain": explain,
                             "limit": limit, "bytes": len(body)})

    @router.get("/{name}/count/{n}")
    async def count(name: str, n: int) -> Response:
        return Response(f"{name}:{n * 2}")

    @router.post("/model")
    async def with_model(body: Body) -> JSONResponse:  # a body model: FastAPI's own handler
        return JSONResponse({"x": body.x})

    app = FastAPI(title="t")
    errors.install(app)
    app.include_router(router)
    return app


REQUESTS = [
    ("post", "/m/a/score", {}, {}),
    ("post", "/m/a/score", {"X-API-Key": "secret"}, {}),
    ("post", "/m/a/score", {"X-API-Key": "secret"},
     {"strict": "yes", "explain": "1", "limit": "3"}),
    ("post", "/m/a/score", {"X-API-Key": "secret"}, {"explain": "maybe"}),
    ("post", "/m/a/score", {"X-API-Key": "secret"}, {"limit": "x", "strict": "no"}),
    ("get", "/m/b/count/21", {"X-API-Key": "secret"}, {}),
    ("get", "/m/b/count/abc", {"X-API-Key": "secret"}, {}),
    ("get", "/m/b/count/21", {"X-API-Key": "wrong"}, {}),
]


@pytest.mark.parametrize("method, path, headers, query", REQUESTS)
def test_a_direct_route_answers_as_fastapi_does(method, path, headers, query):
    answers = []
    for cls in (APIRoute, DirectRoute):
        with TestClient(_app(cls)) as c:
            kwargs = {"content": b"[1, 2]"} if method == "post" else {}
            r = c.request(method, path, headers=headers, params=query, **kwargs)
            answers.append((r.status_code, r.headers.get("content-type"), r.content))
    assert answers[0] == answers[1]
    assert answers[0][0] in (200, 401, 422)


def test_the_plan_covers_the_parameter_forms_and_leaves_the_rest_to_fastapi():
    app = _app(DirectRoute)
    routes = {r.path: r for r in _api_routes(app)}
    assert routes["/m/{name}/score"].planned
    assert routes["/m/{name}/count/{n}"].planned
    assert not routes["/m/model"].planned  # a body model
    with TestClient(app) as c:
        r = c.post("/m/model", json={"x": 4}, headers={"X-API-Key": "secret"})
        assert r.json() == {"x": 4}


def test_the_openapi_description_is_fastapis():
    assert _app(DirectRoute).openapi() == _app(APIRoute).openapi()


def test_every_scoring_route_of_the_service_is_planned():
    """The single-record speed rests on these routes skipping FastAPI's dependency walk."""
    app = create_app(Settings(models=["models:/x@a"]))
    routes = {(r.path, m): r for r in _api_routes(app) for m in r.methods}
    for path, method in (("/v1/models/{name}/score", "POST"), ("/v1/models/{name}/stream", "POST"),
                         ("/invocations", "POST"), ("/v1/models/{name}/invocations", "POST"),
                         ("/v2/models/{name}/infer", "POST"), ("/v1/models/{name}/encode", "POST"),
                         ("/readyz", "GET"), ("/v1/models/{name}", "GET")):
        route = routes[(path, method)]
        assert isinstance(route, DirectRoute) and route.planned, path


def _api_routes(app: FastAPI) -> list[APIRoute]:
    """The app's API routes, inside included routers (FastAPI >= 0.160) or not."""
    out = []
    for r in app.routes:
        if isinstance(r, APIRoute):
            out.append(r)
        out.extend(x for x in getattr(getattr(r, "original_router", None), "routes", [])
                   if isinstance(x, APIRoute))
    return out
