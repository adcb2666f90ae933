"""JWT identity: who is calling comes from the token alone (claim ``customer_id``, else ``sub``)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jwt

from parley.config import Settings
from parley.text import identifier_problem

# An identity is stored with every session and message: the store's customer_id columns are String(255).
MAX_CUSTOMER_ID_CHARS = 255
DEV_CUSTOMER = "1"  # whom ``serve --dev``'s printed token, and the built-in page's dev sign-in, speak for
DEV_TOKEN_TTL_S = 7 * 24 * 3600


class AuthError(Exception):
    """The token is missing, malformed, expired, wrongly signed or names nobody."""


@dataclass(frozen=True)
class Identity:
    customer_id: str


class TokenVerifier:
    """Checks tokens signed with the configured HS256 secret or by an identity provider's RS256 key."""

    def __init__(
        self,
        secret: str | None,
        public_key: str | None = None,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> None:
        self._keys: dict[str, Any] = {}
        if secret:
            self._keys["HS256"] = secret
        if public_key:
            self._keys["RS256"] = public_key
        if not self._keys:
            raise ValueError("no JWT key configured: set PARLEY_JWT_SECRET or PARLEY_JWT_PUBLIC_KEY")
        self._audience = audience
        self._issuer = issuer

    @classmethod
    def from_settings(cls, settings: Settings) -> TokenVerifier:
        secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        if secret is None and settings.dev:
            secret = settings.ensure_dev_secret()
        return cls(secret, settings.public_key_pem(), settings.jwt_audience, settings.jwt_issuer)

    def verify(self, token: str | None) -> Identity:
        if not token:
            raise AuthError("missing token")
        try:
            alg = jwt.get_unverified_header(token).get("alg")
            # Only algorithms we hold a key for; `none` never is one.
            if alg not in self._keys:
                raise AuthError(f"token algorithm {alg!r} is not accepted")
            claims = jwt.decode(
                token,
                self._keys[alg],
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                options={"verify_aud": self._audience is not None},
            )
        except jwt.PyJWTError as exc:
            raise AuthError(str(exc)) from None
        return Identity(customer_id=identity_of(claims))


def identity_of(claims: Mapping[str, Any]) -> str:
    """``customer_id`` if the token carries a usable one, else ``sub``; as a string. One that cannot be an
    identity (too long to store, a control character, a lone surrogate) refuses the token: falling back to
    ``sub`` then would make it someone else."""
    for claim in ("customer_id", "sub"):
        value = claims.get(claim)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
            identity = str(value)
            problem = identifier_problem(identity, MAX_CUSTOMER_ID_CHARS)
            if problem is not None:
                raise AuthError(f"the token's {claim} {problem}")
            return identity
    raise AuthError("token names no customer (claim customer_id or sub)")


def mint_token(
    secret: str,
    customer_id: str,
    ttl_s: int = 24 * 3600,
    audience: str | None = None,
    issuer: str | None = None,
) -> str:
    """Sign an HS256 token for ``customer_id`` valid for ``ttl_s`` seconds. Raises ``ValueError`` for an
    identity the server would refuse (``identity_of``)."""
    problem = identifier_problem(customer_id, MAX_CUSTOMER_ID_CHARS) if customer_id else "must not be empty"
    if problem is not None:
        raise ValueError(f"customer id {problem}")
    now = int(time.time())
    claims: dict[str, Any] = {"customer_id": customer_id, "sub": customer_id, "iat": now, "exp": now + ttl_s}
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    return jwt.encode(claims, secret, algorithm="HS256")


def settings_token(settings: Settings, customer_id: str, ttl_s: int) -> str:
    """A token this server accepts: signed with the configured secret, else the dev one (made if need be)."""
    if settings.jwt_secret is not None:
        secret = settings.jwt_secret.get_secret_value()
    else:
        secret = settings.ensure_dev_secret()
    return mint_token(secret, customer_id, ttl_s, settings.jwt_audience, settings.jwt_issuer)


def token_from(query: Mapping[str, str], headers: Mapping[str, str]) -> str | None:
    """The token from ``?token=`` or an ``Authorization: Bearer`` header."""
    token = query.get("token")
    if token:
        return token
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None
