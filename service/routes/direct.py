"""A route class that calls its endpoint without FastAPI's per-request dependency solving.

FastAPI resolves an endpoint's parameters anew for every request, walking its dependency tree;
on a single record that walk is about a third of the service's own time. :class:`DirectRoute`
plans the walk once, when the route is declared, for the parameter forms the scoring routes
use, and replays the plan per request:

- the :class:`~starlette.requests.Request`;
- path parameters, validated by their annotation;
- query parameters (``Query(...)`` or a plain default), validated by their annotation; a bad
  value is the same 422 as FastAPI's (``loc`` ``("query", name)``);
- ``Depends(fn)`` / ``Security(fn)`` on an ``async def`` whose own parameters are of these
  forms, and ``Security(APIKeyHeader(..., auto_error=False))``: the header or None;
- the router's and the route's ``dependencies=[...]``, run first, in order.

The endpoint must return a :class:`~starlette.responses.Response` (its return annotation says
so). A route with any other parameter form (a body model, a file, a ``yield`` dependency,
background tasks) keeps FastAPI's own handler: the plan is an optimisation, never a second
meaning. The OpenAPI description comes from the endpoint's signature as for any route.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import params
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader
from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticUndefined
from starlette.requests import Request
from starlette.responses import Response

# What one argument gets per request, and whether it is awaited (dependencies) or not.
Getter = tuple[Callable[[Request], Any], bool]


class Unplanned(Exception):
    """A parameter form the plan does not cover: the route keeps FastAPI's handler."""


class DirectRoute(APIRoute):
    """An :class:`~fastapi.routing.APIRoute` whose requests call the endpoint through a plan
    made once (see the module's description), or through FastAPI's handler where no plan can
    be made. ``planned`` says which."""

    planned: bool = False

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        try:
            call, _ = _plan_call(self.endpoint, set(self.param_convertors),
                                 returns_response=True)
            before = [_plan_dependency(d, set(self.param_convertors)) for d in self.dependencies]
        except Unplanned:
            return super().get_route_handler()
        self.planned = True

        async def handler(request: Request) -> Response:
            for get, awaited in before:
                if awaited:
                    await get(request)
                else:
                    get(request)
            return await call(request)

        return handler


def _plan_call(fn: Callable[..., Awaitable[Any]], path_names: set[str],
               returns_response: bool = False) -> Getter:
    """A coroutine function ``request -> fn(**arguments)`` with every argument planned."""
    if not inspect.iscoroutinefunction(fn):
        raise Unplanned(f"{fn!r} is not an async def")
    hints = typing.get_type_hints(fn, include_extras=True)
    if returns_response and not _is_response(hints.get("return")):
        raise Unplanned(f"{fn!r} does not return a Response")
    getters = [(p.name, *_plan_parameter(p, hints.get(p.name, Any), path_names))
               for p in inspect.signature(fn).parameters.values()]

    async def call(request: Request) -> Any:
        arguments = {}
        for name, get, awaited in getters:
            arguments[name] = (await get(request)) if awaited else get(request)
        return await fn(**arguments)

    return call, True


def _is_response(annotation: Any) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, Response)


def _plan_dependency(marker: params.Depends, path_names: set[str]) -> Getter:
    """What a ``Depends``/``Security`` marker gives, per request."""
    dependency = marker.dependency
    if isinstance(dependency, APIKeyHeader) and not dependency.auto_error:
        header = dependency.model.name.lower()

        def key(request: Request) -> str | None:
            return request.headers.get(header)

        return key, False
    if dependency is None or getattr(marker, "use_cache", True) is False:
        raise Unplanned("a dependency without a callable, or uncached")
    return _plan_call(dependency, path_names)


def _plan_parameter(p: inspect.Parameter, annotation: Any, path_names: set[str]) -> Getter:
    """What one endpoint parameter gets, per request."""
    kind, marker = annotation, p.default
    if typing.get_origin(annotation) is typing.Annotated:
        kind, *extras = typing.get_args(annotation)
        markers = [e for e in extras if isinstance(e, (params.Depends, params.Param))]
        if len(markers) > 1:
            raise Unplanned(f"{p.name}: more than one marker")
        if markers:
            marker = markers[0]
    if inspect.isclass(kind) and issubclass(kind, Request):
        def the_request(request: Request) -> Request:
            return request

        return the_request, False
    if isinstance(marker, params.Depends):
        return _plan_dependency(marker, path_names)
    if p.name in path_names and not isinstance(marker, params.Param):
        return _value_getter("path", p.name, kind, inspect.Parameter.empty)
    if isinstance(marker, params.Query):
        default = marker.default if marker is p.default else p.default
        if (any(default is x for x in (..., inspect.Parameter.empty, PydanticUndefined))
                or marker.alias
                or marker.default_factory is not None):
            raise Unplanned(f"{p.name}: a required, aliased or factory query parameter")
        return _value_getter("query", p.name, kind, default)
    if isinstance(marker, params.Param) or p.default is inspect.Parameter.empty:
        raise Unplanned(f"{p.name}: not a form the plan covers")
    if typing.get_origin(kind) in (list, tuple, set, dict) or _is_model(kind):
        raise Unplanned(f"{p.name}: a body or sequence parameter")
    return _value_getter("query", p.name, kind, p.default)


def _is_model(kind: Any) -> bool:
    return inspect.isclass(kind) and hasattr(kind, "model_fields")


def _value_getter(where: str, name: str, kind: Any, default: Any) -> Getter:
    """A path or query value validated as ``kind`` (FastAPI's 422 when it is not one)."""
    adapter = TypeAdapter(kind)

    def value(request: Request) -> Any:
        raw = (request.path_params if where == "path" else request.query_params).get(name)
        if raw is None:
            return default
        try:
            return adapter.validate_python(raw)
        except ValidationError as e:
            raise RequestValidationError([{**err, "loc": (where, name, *err["loc"])}
                                          for err in e.errors(include_url=False)]) from None

    return value, False
