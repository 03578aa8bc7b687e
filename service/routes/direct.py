"""A route class that calls its endpoint without FastAPI's per-request dependency solving.

FastAPI resolves an endpoint's parameters anew for every request, walking its dependency tree;
on a single record that walk is about a third of the service's own time. :class:`DirectRoute`
plans the walk once, when the route is declared, for the parameter forms the scoring routes
use, and replays the plan per request with FastAPI's semantics: dependencies first (the
router's and the include's ``dependencies=[...]``, then the endpoint's, in order, each called
once per request), then the path and query values; every invalid value is reported in one 422
(``loc`` ``("path" | "query", name)``), and a dependency whose own values are invalid is not
called. The forms:

- the :class:`~starlette.requests.Request`;
- path parameters and query parameters (``Query(...)`` without constraints, or a plain
  default) of a scalar type (``str``, ``int``, ``float``, ``bool``, optionally ``| None``),
  validated by it;
- ``Depends(fn)`` / ``Security(fn)`` on an ``async def`` whose own parameters are of these
  forms, and ``Security(APIKeyHeader(..., auto_error=False))``: the header, or None;
- one required ``Annotated[list[UploadFile], File(...)]`` or ``Annotated[UploadFile,
  File(...)]`` of the endpoint: the form is read after the route's own dependencies (the API
  key: a caller without one gets its 401 before any upload is parsed, where FastAPI reads the
  form first) and before the endpoint's, as FastAPI reads it (its limits; a form that does not
  parse is FastAPI's 400); when the field holds one or more files they are passed on (a single
  field: the last) and closed after the endpoint; anything else in the field (nothing, text) is
  answered by FastAPI's handler, from the same form, with its 422.

The endpoint must be annotated to return a :class:`~starlette.responses.Response` (and must
return one: anything else is a 500). A route with any other form (a body, a form field, an
optional file, a list, a constrained or aliased value, a sync or ``yield`` dependency) keeps
FastAPI's own handler, and so does every request made while ``app.dependency_overrides`` is not
empty: the plan is an optimisation, never a second meaning. The OpenAPI description comes from the
endpoint's signature as for any route.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import params
from fastapi import routing as fastapi_routing
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader
from pydantic import TypeAdapter, ValidationError
from pydantic_core import PydanticUndefined
from starlette.datastructures import FormData, UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

_SCALARS = (str, int, float, bool)
# Per request: the errors found so far, and the dependencies' results by callable.
Errors = list[dict[str, Any]]
Cache = dict[Any, Any]
# A dependency: (request, errors, cache) -> its result (awaited).
DependencyGetter = Callable[[Request, Errors, Cache], Awaitable[Any]]
# A value: request -> the validated value (raises RequestValidationError).
ValueGetter = Callable[[Request], Any]


# FastAPI >= 0.16x reads a form with the limits of the routers it is included in
# (``form_limits``), kept in the request's scope, and maps a body over its own size limit to
# its 413; earlier versions have neither, and read the form with Starlette's defaults.
_resolve_form_limits = getattr(fastapi_routing, "_resolve_form_limits", None)
_FASTAPI_SCOPE_KEY = getattr(fastapi_routing, "_FASTAPI_SCOPE_KEY", None)
try:
    from fastapi._body_limit import MAX_BODY_SIZE_SCOPE_KEY, get_body_limit_error
except ImportError:  # FastAPI without body size limits of its own
    MAX_BODY_SIZE_SCOPE_KEY, get_body_limit_error = None, None


class Unplanned(Exception):
    """A parameter form the plan does not cover: the route keeps FastAPI's handler."""


class DirectRoute(APIRoute):
    """An :class:`~fastapi.routing.APIRoute` whose requests call the endpoint through a plan
    made once (see the module's description), or through FastAPI's handler where no plan can
    be made. ``planned`` says which."""

    planned: bool = False

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        fallback = super().get_route_handler()
        # Included into an app, a route is answered with the inclusion's state (FastAPI >=
        # 0.160: its dependencies, path and overrides), passed in while the handler is built.
        route = self
        context_var = getattr(fastapi_routing, "_effective_route_context_var", None)
        context = context_var.get() if context_var is not None else None
        if context is not None and getattr(context, "original_route", None) is self:
            route = context
        try:
            path_names = set(route.param_convertors)
            before = [_plan_dependency(d, path_names) for d in route.dependencies]
            hints = _hints(self.endpoint)
            if not _is_response(hints.get("return")):
                raise Unplanned("the endpoint is not annotated to return a Response")
            arguments = _plan_arguments(self.endpoint, path_names, hints)
            files = _files_field(self.endpoint, hints)
        except Unplanned:
            return fallback
        self.planned = True
        overrides = getattr(route, "dependency_overrides_provider", None)
        form_limits = getattr(self, "form_limits", None)
        endpoint = self.endpoint

        async def handler(request: Request) -> Response:
            if overrides is not None and getattr(overrides, "dependency_overrides", None):
                return await fallback(request)
            errors: Errors = []
            cache: Cache = {}
            # The route's own dependencies (the API key) run before an upload is read: FastAPI
            # reads the form first, so a caller without a key could make it parse and spool
            # a whole upload before its 401.
            for dependency in before:
                await dependency(request, errors, cache)
            form = None
            if files is not None:
                form = await _read_form(request, form_limits)
                name, many = files
                # FastAPI's reading: every part of a list field, the last part of a single one
                uploads = form.getlist(name) if many else [form.get(name)]
                if not uploads or not all(isinstance(u, UploadFile) for u in uploads):
                    return await fallback(request)  # its 422, from the form read above
            try:
                values = await arguments(request, errors, cache)
                if errors:
                    raise RequestValidationError(errors)
                if form is not None:
                    values[name] = uploads if many else uploads[0]
                response = await endpoint(**values)
            finally:
                if form is not None:
                    await form.close()
            if not isinstance(response, Response):
                raise TypeError(f"{endpoint.__qualname__} returned {type(response).__name__}, "
                                "not the Response its annotation promises")
            return response

        return handler


async def _read_form(request: Request, route_limits: Any) -> FormData:
    """The request's form as FastAPI reads it for a route with a file: the limits of the
    routers it is included in and of the route, an HTTP error as it is, any other failure a
    400 (or FastAPI's 413 for a body over its own size limit)."""
    limits = {}
    if _resolve_form_limits is not None and _FASTAPI_SCOPE_KEY is not None:
        limits = _resolve_form_limits(request.scope.get(_FASTAPI_SCOPE_KEY, {}), route_limits)
    try:
        return await request.form(**limits)
    except HTTPException:
        raise
    except Exception as e:
        if MAX_BODY_SIZE_SCOPE_KEY in request.scope and (error := get_body_limit_error(e)):
            raise error from e
        raise HTTPException(status_code=400, detail="There was an error parsing the body") from e


def _files_field(fn: Callable[..., Any], hints: dict[str, Any]) -> tuple[str, bool] | None:
    """The name of ``fn``'s one required file parameter, ``Annotated[list[UploadFile],
    File(...)]`` or ``Annotated[UploadFile, File(...)]``, and whether it is a list; None
    without one (``_plan_parameter`` has checked its form)."""
    found = [(p.name, many) for p in inspect.signature(fn).parameters.values()
             if (many := _is_files(hints.get(p.name), p.default)) is not None]
    if len(found) > 1:
        raise Unplanned("more than one file field")
    return found[0] if found else None


def _is_files(annotation: Any, default: Any) -> bool | None:
    """For a required ``Annotated[list[UploadFile], File(...)]`` True, for a required
    ``Annotated[UploadFile, File(...)]`` False, for a parameter that is no form field None;
    any other file or form parameter is :class:`Unplanned`."""
    kind, marker = annotation, default
    if typing.get_origin(annotation) is typing.Annotated:
        kind, *extras = typing.get_args(annotation)
        marker = next((e for e in extras if isinstance(e, params.FieldInfo)), default)
    if not isinstance(marker, params.Form):
        return None
    many = typing.get_origin(kind) is list
    item = typing.get_args(kind)[0] if many else kind
    if not (isinstance(marker, params.File) and inspect.isclass(item)
            and issubclass(item, UploadFile)):
        raise Unplanned("a form field")
    if (marker.alias or marker.validation_alias or marker.default_factory is not None
            or marker.metadata or marker.default not in (..., PydanticUndefined)
            or default is not inspect.Parameter.empty):
        raise Unplanned("an optional, aliased or constrained file field")
    return many


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(fn, include_extras=True)
    except Exception as e:  # an annotation that does not resolve: FastAPI's handler decides
        raise Unplanned(f"{fn!r}: {e}") from None


def _is_response(annotation: Any) -> bool:
    return inspect.isclass(annotation) and issubclass(annotation, Response)


def _plan_arguments(fn: Callable[..., Any], path_names: set[str],
                    hints: dict[str, Any] | None = None, files_allowed: bool = True
                    ) -> DependencyGetter:
    """``(request, errors, cache) -> fn's keyword arguments``: its dependencies' results, then
    its values (not a file field: the handler adds it); invalid values are appended to
    ``errors``."""
    if not inspect.iscoroutinefunction(fn):
        raise Unplanned(f"{fn!r} is not an async def")
    hints = _hints(fn) if hints is None else hints
    dependencies: list[tuple[str, DependencyGetter]] = []
    values: list[tuple[str, ValueGetter]] = []
    for p in inspect.signature(fn).parameters.values():
        kind, get = _plan_parameter(p, hints.get(p.name, Any), path_names)
        if kind == "files":
            if not files_allowed:
                raise Unplanned(f"{p.name}: a file field of a dependency")
            continue  # the handler passes the form's files
        (dependencies if kind == "dependency" else values).append((p.name, get))

    async def arguments(request: Request, errors: Errors, cache: Cache) -> dict[str, Any]:
        out = {}
        for name, dependency in dependencies:
            out[name] = await dependency(request, errors, cache)
        for name, value in values:
            try:
                out[name] = value(request)
            except RequestValidationError as e:
                errors.extend(e.errors())
        return out

    return arguments


def _plan_dependency(marker: params.Depends, path_names: set[str]) -> DependencyGetter:
    """What a ``Depends``/``Security`` marker gives, per request (cached per request, as
    FastAPI caches it, unless ``use_cache=False``)."""
    dependency = marker.dependency
    if type(dependency) is APIKeyHeader and not dependency.auto_error:
        header = dependency.model.name.lower()

        async def key(request: Request, errors: Errors, cache: Cache) -> str | None:
            return request.headers.get(header) or None

        return key
    if dependency is None or isinstance(marker, params.Security) and marker.scopes:
        raise Unplanned("a dependency without a callable, or with security scopes")
    arguments = _plan_arguments(dependency, path_names, files_allowed=False)
    use_cache = getattr(marker, "use_cache", True)

    async def call(request: Request, errors: Errors, cache: Cache) -> Any:
        if use_cache and dependency in cache:
            return cache[dependency]
        mine: Errors = []
        values = await arguments(request, mine, cache)
        if mine:  # FastAPI does not call a dependency whose own values are invalid
            errors.extend(mine)
            return None
        result = await dependency(**values)
        if use_cache:
            cache[dependency] = result
        return result

    return call


def _plan_parameter(p: inspect.Parameter, annotation: Any, path_names: set[str]
                    ) -> tuple[str, Any]:
    """``("dependency", getter)`` or ``("value", getter)`` for one parameter."""
    if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
        raise Unplanned(f"{p.name}: *args or **kwargs")
    kind, marker = annotation, p.default
    if typing.get_origin(annotation) is typing.Annotated:
        kind, *extras = typing.get_args(annotation)
        markers = [e for e in extras if isinstance(e, params.Depends | params.FieldInfo)]
        if len(markers) != len(extras) or len(markers) > 1:
            raise Unplanned(f"{p.name}: metadata beyond one FastAPI marker")
        if markers:
            marker = markers[0]
    if inspect.isclass(kind) and issubclass(kind, Request) and marker is p.default:
        return "value", _the_request
    if isinstance(marker, params.Depends):
        return "dependency", _plan_dependency(marker, path_names)
    if _is_files(annotation, p.default) is not None:
        return "files", None
    if not _scalar(kind):
        raise Unplanned(f"{p.name}: not a scalar value")
    if isinstance(marker, params.FieldInfo):
        if not isinstance(marker, params.Query):  # Body, Form, File, Header, Cookie, Path
            raise Unplanned(f"{p.name}: a {type(marker).__name__} parameter")
        default = marker.default if marker is p.default else p.default
        if (marker.alias or marker.validation_alias or marker.default_factory is not None
                or marker.metadata):
            raise Unplanned(f"{p.name}: an aliased, constrained or factory query parameter")
        if any(default is x for x in (..., inspect.Parameter.empty, PydanticUndefined)):
            raise Unplanned(f"{p.name}: a required query parameter")
        if p.name in path_names:
            raise Unplanned(f"{p.name}: a query parameter named like a path parameter")
        return "value", _value_getter("query", p.name, kind, default)
    if p.name in path_names:
        return "value", _value_getter("path", p.name, kind, inspect.Parameter.empty)
    if p.default is inspect.Parameter.empty:
        raise Unplanned(f"{p.name}: a required query parameter")
    return "value", _value_getter("query", p.name, kind, p.default)


def _the_request(request: Request) -> Request:
    return request


def _scalar(kind: Any) -> bool:
    """``str``, ``int``, ``float`` or ``bool``, optionally ``| None``."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return all(a is type(None) or a in _SCALARS for a in typing.get_args(kind))
    return kind in _SCALARS


def _value_getter(where: str, name: str, kind: Any, default: Any) -> ValueGetter:
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

    return value
