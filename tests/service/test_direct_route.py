"""DirectRoute: the same answers and the same OpenAPI description as FastAPI's own routes."""

from __future__ import annotations

from typing import Annotated

import pytest
from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, Security, UploadFile
from fastapi import Body as BodyParam
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


CALLS: list[str] = []


async def counted(request: Request) -> int:
    CALLS.append(request.url.path)
    return len(CALLS)


async def deny(request: Request) -> None:
    from training.errors import AuthError

    raise AuthError("denied at the include")


async def allow(request: Request) -> None:
    return None


def _app(route_class: type[APIRoute], include_dependencies: list | None = None) -> FastAPI:
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

    @router.get("/cached")
    async def cached(a: Annotated[int, Depends(counted)],
                     b: Annotated[int, Depends(counted)]) -> JSONResponse:
        return JSONResponse({"same": a == b})

    @router.get("/constrained")
    async def constrained(lim: Annotated[int, Query(ge=1)] = 5) -> JSONResponse:
        return JSONResponse({"lim": lim})

    @router.get("/listed")
    async def listed(q: Annotated[list[str] | None, Query()] = None) -> JSONResponse:
        return JSONResponse({"q": q})

    @router.post("/embedded")
    async def embedded(x: Annotated[int, BodyParam(embed=True)] = 0) -> JSONResponse:
        return JSONResponse({"x": x})

    @router.post("/{name}/upload")
    async def upload(name: str, files: Annotated[list[UploadFile], File(description="files")],
                     title: Annotated[str, Depends(app_name)], flag: bool = False
                     ) -> JSONResponse:
        return JSONResponse({"name": name, "title": title, "flag": flag,
                             "files": [(f.filename, len(await f.read())) for f in files]})

    @router.post("/one-file")
    async def one_file(file: Annotated[UploadFile, File()]) -> JSONResponse:
        return JSONResponse({"file": file.filename, "bytes": len(await file.read())})

    @router.post("/form-field")
    async def form_field(files: Annotated[list[UploadFile], File()],
                         note: Annotated[str, Form()]) -> JSONResponse:
        return JSONResponse({"note": note})

    app = FastAPI(title="t")
    errors.install(app)
    app.include_router(router, dependencies=include_dependencies or [])
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
    ("get", "/m/b/count/21", {"X-API-Key": ""}, {}),
    ("post", "/m/a/score", {"X-API-Key": "secret"}, {"explain": "maybe", "limit": "x"}),
    ("post", "/m/a/score", {"X-API-Key": "secret"}, {"explain": ["1", "0"]}),
    ("get", "/m/constrained", {"X-API-Key": "secret"}, {"lim": "0"}),
    ("get", "/m/listed", {"X-API-Key": "secret"}, {"q": ["p", "q"]}),
    ("post", "/m/embedded", {"X-API-Key": "secret"}, {}),
]


@pytest.mark.parametrize("method, path, headers, query", REQUESTS)
def test_a_direct_route_answers_as_fastapi_does(method, path, headers, query):
    answers = []
    for cls in (APIRoute, DirectRoute):
        with TestClient(_app(cls)) as c:
            kwargs = {"content": b"[1, 2]"} if method == "post" else {}
            if path.endswith("/embedded"):
                kwargs = {"json": {"x": 7}}
            r = c.request(method, path, headers=headers, params=query, **kwargs)
            answers.append((r.status_code, r.headers.get("content-type"), r.content))
    assert answers[0] == answers[1]
    assert answers[0][0] in (200, 401, 422)


UPLOADS = [
    ({"X-API-Key": "secret"}, {"flag": "1"}, {"files": [("files", ("a.png", b"12345")),
                                                        ("files", ("b.png", b"xy"))]}),
    ({"X-API-Key": "secret"}, {}, {"files": [("files", ("a.png", b""))]}),
    ({}, {}, {"files": [("files", ("a.png", b"12345"))]}),  # no key: 401
    ({"X-API-Key": "secret"}, {"flag": "maybe"}, {"files": [("files", ("a.png", b"1"))]}),
    ({"X-API-Key": "secret"}, {}, {}),  # no files at all: 422
    ({"X-API-Key": "secret"}, {}, {"data": {"files": "text"}}),  # text, not a file: 422
    ({"X-API-Key": "secret"}, {}, {"data": {"other": "x"},
                                   "files": [("other", ("a.png", b"1"))]}),  # another field
    ({"X-API-Key": "secret"}, {}, {"content": b"--x\r\nbroken",  # not a form that parses
                                   "headers": {"content-type": "multipart/form-data"}}),
    ({"X-API-Key": "secret"}, {}, {"json": {"files": []}}),  # JSON: no form, 422
]


@pytest.mark.parametrize("headers, query, body", UPLOADS)
def test_an_upload_route_answers_as_fastapi_does(headers, query, body):
    answers = []
    for cls in (APIRoute, DirectRoute):
        with TestClient(_app(cls)) as c:
            extra = dict(body)
            merged = {**headers, **extra.pop("headers", {})}
            r = c.post("/m/a/upload", headers=merged, params=query, **extra)
            answers.append((r.status_code, r.headers.get("content-type"), r.content))
    assert answers[0] == answers[1]
    assert answers[0][0] in (200, 400, 401, 422)


@pytest.mark.parametrize("headers, body", [
    ({"X-API-Key": "secret"}, {"files": [("file", ("a.csv", b"123"))]}),
    ({"X-API-Key": "secret"}, {"files": [("file", ("a.csv", b"1")),  # two parts: the last
                                         ("file", ("b.csv", b"22"))]}),
    ({}, {"files": [("file", ("a.csv", b"1"))]}),  # no key: 401
    ({"X-API-Key": "secret"}, {}),  # no file: 422
    ({"X-API-Key": "secret"}, {"data": {"file": "text"}}),  # text, not a file: 422
])
def test_a_single_file_route_answers_as_fastapi_does(headers, body):
    answers = []
    for cls in (APIRoute, DirectRoute):
        with TestClient(_app(cls)) as c:
            r = c.post("/m/one-file", headers=headers, **body)
            answers.append((r.status_code, r.content))
    assert answers[0] == answers[1]


def test_a_caller_without_a_key_is_refused_before_its_upload_is_read():
    """The one answer that differs from FastAPI's, on purpose: FastAPI parses the form (and
    spools its files) before the route's dependencies, so a broken form without a key is its
    400; here the key is checked first and the body is never read."""
    broken = {"content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data"}}
    with TestClient(_app(APIRoute)) as c:
        assert c.post("/m/a/upload", **broken).status_code == 400
    with TestClient(_app(DirectRoute)) as c:
        r = c.post("/m/a/upload", **broken)
        assert r.status_code == 401, r.text
        big = c.post("/m/a/upload", files=[("files", ("a.png", b"x" * 5_000_000))])
        assert big.status_code == 401


def test_uploaded_files_are_closed_after_the_endpoint():
    seen = []

    router = APIRouter(route_class=DirectRoute)

    @router.post("/up")
    async def up(files: Annotated[list[UploadFile], File()]) -> JSONResponse:
        seen.extend(files)
        return JSONResponse({"n": len(files)})

    app = FastAPI()
    app.include_router(router)
    assert router.routes[0].planned
    with TestClient(app) as c:
        assert c.post("/up", files=[("files", ("a", b"1"))]).json() == {"n": 1}
    assert seen and all(f.file.closed for f in seen)


def test_dependencies_of_the_include_and_overrides_are_honoured():
    for cls in (APIRoute, DirectRoute):
        with TestClient(_app(cls, include_dependencies=[Depends(deny)])) as c:
            r = c.post("/m/a/score", headers={"X-API-Key": "secret"})
            assert r.status_code == 401 and "denied at the include" in r.text, cls
        app = _app(cls)
        app.dependency_overrides[need_key] = allow
        with TestClient(app) as c:
            assert c.post("/m/a/score").status_code == 200, cls  # no key needed now


def test_a_dependency_used_twice_runs_once_per_request():
    with TestClient(_app(DirectRoute)) as c:
        CALLS.clear()
        assert c.get("/m/cached", headers={"X-API-Key": "secret"}).json() == {"same": True}
        assert len(CALLS) == 1


def test_the_plan_covers_the_parameter_forms_and_leaves_the_rest_to_fastapi():
    app = _app(DirectRoute)
    routes = {r.path: r for r in _api_routes(app)}
    assert routes["/m/{name}/score"].planned
    assert routes["/m/{name}/count/{n}"].planned
    assert routes["/m/cached"].planned
    assert routes["/m/{name}/upload"].planned
    assert routes["/m/one-file"].planned
    for path in ("/m/model", "/m/constrained", "/m/listed", "/m/embedded", "/m/form-field"):
        assert not routes[path].planned, path  # a body, a constraint, a list, a form: FastAPI's
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
                         ("/readyz", "GET"), ("/v1/models/{name}", "GET"),
                         ("/v1/models/{name}/score-images", "POST"),
                         ("/v1/models/{name}/score-file", "POST")):
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


def test_the_guards_own_answers_carry_the_cors_headers():
    """A browser must see the 413 (or 504), not a CORS failure: CORS sits outside the guard."""
    app = create_app(Settings(models=["models:/x@a"], cors_origins=["http://a.example"],
                              max_body_bytes=1024))
    r = TestClient(app).post("/v1/models/x/score", content=b"x" * 5000, headers={
        "Origin": "http://a.example", "Content-Type": "application/json"})
    assert r.status_code == 413
    assert r.headers["access-control-allow-origin"] == "http://a.example"
