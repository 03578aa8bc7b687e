"""API keys in the ``X-API-Key`` header, compared in constant time.

With no keys configured the service is open (and says so at start). Admin keys may do
everything; reloading a model needs one. With scoring keys but no admin key, reload is off.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader
from pydantic import SecretStr

from service.settings import Settings
from training.errors import AuthError, ForbiddenError

API_KEY_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="a key from ANOMALY_API_KEYS (or an admin key)")


def _matches(given: str, keys: list[SecretStr]) -> bool:
    """Whether ``given`` is one of ``keys``; every key is compared, in constant time."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(given.encode(), key.get_secret_value().encode())
    return found


def check_key(settings: Settings, given: str | None, admin: bool = False) -> None:
    """Raise unless ``given`` may score (or, with ``admin``, reload).

    Raises:
        AuthError: a key is needed and none or an unknown one was given (401).
        ForbiddenError: a scoring key was given where an admin key is needed (403).
    """
    if not settings.auth_enabled:
        return
    if not given:
        raise AuthError("this service needs an API key: send it in the X-API-Key header")
    is_admin = _matches(given, settings.admin_api_keys)
    if admin:
        if is_admin:
            return
        if _matches(given, settings.api_keys):
            raise ForbiddenError("reloading models needs an admin key (ANOMALY_ADMIN_API_KEYS)")
        raise AuthError("unknown API key")
    if not (is_admin or _matches(given, settings.api_keys)):
        raise AuthError("unknown API key")


def may_see_details(settings: Settings, given: str | None) -> bool:
    """Whether a caller may see what is behind a probe's answer (registry errors naming URLs
    and folders): anyone on an open service, a caller with a valid key otherwise."""
    try:
        check_key(settings, given)
    except AuthError:
        return False
    return True


async def require_key(request: Request,
                key: Annotated[str | None, Security(API_KEY_HEADER)] = None) -> None:
    """Dependency: the caller may score."""
    check_key(request.app.state.settings, key)


async def require_admin(request: Request,
                  key: Annotated[str | None, Security(API_KEY_HEADER)] = None) -> None:
    """Dependency: the caller may reload models."""
    check_key(request.app.state.settings, key, admin=True)


ScoreAccess = Depends(require_key)
AdminAccess = Depends(require_admin)
