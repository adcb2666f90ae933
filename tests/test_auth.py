"""Authentication: who may open /chat/ws (PROTOCOL sections 1 and 7) and whose data a token reaches."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator
from functools import cache
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.conftest import SECRET, LiveServer, live_server, make_settings
from tests.wsclient import ChatClient, chat_frame

AUDIENCE = "parley-tests"
ISSUER = "https://idp.example.test/"


# -- helpers -----------------------------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def claims_for(customer_id: str = "1", ttl_s: int = 3600, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"customer_id": customer_id, "sub": customer_id, "iat": now, "exp": now + ttl_s, **extra}


def hs256(claims: dict[str, Any], secret: str = SECRET) -> str:
    return jwt.encode(claims, secret, algorithm="HS256")


def hand_signed(header: dict[str, Any], claims: dict[str, Any], key: bytes | None) -> str:
    """A JWT built without PyJWT: ``key`` None gives an empty signature, else HMAC-SHA256 with it."""
    signing_input = f"{segment(header)}.{segment(claims)}"
    if key is None:
        return signing_input + "."
    mac = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(mac)}"


async def refusal(url: str, **kwargs: Any) -> tuple[int, bytes]:
    """Open ``url``; assert the server refuses the upgrade; return the HTTP status and body."""
    with pytest.raises(InvalidStatus) as info:
        async with connect(url, open_timeout=10, **kwargs):
            pass
    return info.value.response.status_code, bytes(info.value.response.body or b"")


async def assert_unauthorized(server: LiveServer, token: str | None) -> None:
    url = server.ws_url + (f"?token={token}" if token is not None else "")
    status, body = await refusal(url)
    assert status == 401, f"expected 401, got {status}"
    assert orjson.loads(body)["code"] == "unauthorized"


async def assert_accepted(server: LiveServer, token: str, customer_id: str = "1") -> None:
    """The token opens a connection, a turn completes, and the session belongs to ``customer_id``."""
    async with await ChatClient.open(server.ws_url, token) as client:
        assert client.ready["type"] == "websocketReady"
        turn = await client.turn(await client.chat("Who am I?"))
    assert turn.status == "completed" and turn.session_id is not None
    assert await server.store.find_session(customer_id, turn.session_id) is not None


async def send_chat(client: ChatClient, prompt: str = "Hello", **fields: Any) -> str:
    """Send a chat request with extra top-level ``fields``; return its request_id."""
    frame = chat_frame(prompt) | fields
    await client.send(frame)
    return str(frame["request_id"])


@cache
def rsa_keypair() -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return key, pem


def rs256(claims: dict[str, Any], key: rsa.RSAPrivateKey | None = None) -> str:
    return jwt.encode(claims, key or rsa_keypair()[0], algorithm="RS256")


def idp_claims(customer_id: str = "1", **changes: Any) -> dict[str, Any]:
    """Claims an identity provider would issue; a change of ``None`` drops that claim."""
    claims = claims_for(customer_id, aud=AUDIENCE, iss=ISSUER) | changes
    return {k: v for k, v in claims.items() if v is not None}


# -- refused before the upgrade ----------------------------------------------------------------------


async def test_no_token_is_refused_with_401(sqlite_server: LiveServer) -> None:
    await assert_unauthorized(sqlite_server, None)
    await assert_unauthorized(sqlite_server, "")


@pytest.mark.parametrize(
    "token",
    ["not-a-jwt", "a.b.c", "eyJhbGciOiJIUzI1NiJ9", "eyJhbGciOiJIUzI1NiJ9.e30", "....", "%00%ff"],
)
async def test_malformed_token_is_refused_with_401(sqlite_server: LiveServer, token: str) -> None:
    await assert_unauthorized(sqlite_server, token)


async def test_token_signed_with_another_secret_is_refused(sqlite_server: LiveServer) -> None:
    await assert_unauthorized(sqlite_server, hs256(claims_for(), "another-secret-" + "y" * 40))


async def test_token_with_tampered_claims_is_refused(sqlite_server: LiveServer) -> None:
    header, _, signature = hs256(claims_for("1")).split(".")
    await assert_unauthorized(sqlite_server, f"{header}.{segment(claims_for('2'))}.{signature}")


async def test_expired_token_is_refused(sqlite_server: LiveServer) -> None:
    await assert_unauthorized(sqlite_server, sqlite_server.token(1, ttl_s=-30))


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_alg_none_token_is_refused(sqlite_server: LiveServer, alg: str) -> None:
    header = {"alg": alg, "typ": "JWT"}
    await assert_unauthorized(sqlite_server, hand_signed(header, claims_for(), None))


async def test_alg_none_header_swapped_into_a_valid_token_is_refused(sqlite_server: LiveServer) -> None:
    valid = sqlite_server.token(1)
    _, claims, signature = valid.split(".")
    none_header = segment({"alg": "none", "typ": "JWT"})
    # The real HS256 signature kept, the header saying `none`; and the signature stripped too.
    await assert_unauthorized(sqlite_server, f"{none_header}.{claims}.{signature}")
    await assert_unauthorized(sqlite_server, f"{none_header}.{claims}.")
    # Signed with the real secret over the `none` header: still `none`, still refused.
    await assert_unauthorized(
        sqlite_server, hand_signed({"alg": "none", "typ": "JWT"}, claims_for(), SECRET.encode())
    )


@pytest.mark.parametrize(
    "claims",
    [
        {},
        {"name": "nobody"},
        {"customer_id": ""},
        {"sub": ""},
        {"customer_id": None},
        {"customer_id": ["1"]},
        {"customer_id": {"id": 1}},
        {"customer_id": True},
    ],
    ids=["no-claims", "other-claim", "empty-customer", "empty-sub", "null", "list", "object", "bool"],
)
async def test_token_naming_no_customer_is_refused(sqlite_server: LiveServer, claims: dict[str, Any]) -> None:
    now = int(time.time())
    await assert_unauthorized(sqlite_server, hs256({"iat": now, "exp": now + 3600, **claims}))


async def test_refused_token_never_reaches_a_turn(sqlite_server: LiveServer) -> None:
    """A refusal is an HTTP answer: no upgrade, so nothing after it (and nothing stored)."""
    status, body = await refusal(sqlite_server.ws_url + "?token=garbage")
    assert status == 401
    detail = orjson.loads(body)
    assert set(detail) == {"detail", "code"}
    assert "garbage" not in detail["detail"]


# -- accepted ----------------------------------------------------------------------------------------


async def test_token_in_query_is_accepted(sqlite_server: LiveServer) -> None:
    await assert_accepted(sqlite_server, sqlite_server.token(1))


async def test_hand_signed_hs256_token_is_accepted(sqlite_server: LiveServer) -> None:
    """Control for the forgeries below: ``hand_signed`` with the right key makes a valid token."""
    await assert_accepted(
        sqlite_server, hand_signed({"alg": "HS256", "typ": "JWT"}, claims_for("3"), SECRET.encode()), "3"
    )


async def test_bearer_header_is_accepted(sqlite_server: LiveServer) -> None:
    headers = {"Authorization": f"Bearer {sqlite_server.token(5)}"}
    async with await ChatClient.open(sqlite_server.ws_url, None, additional_headers=headers) as client:
        assert client.ready["type"] == "websocketReady"
        turn = await client.turn(await client.chat("Hello by header"))
    assert turn.status == "completed" and turn.session_id is not None
    assert await sqlite_server.store.find_session("5", turn.session_id) is not None


async def test_bad_bearer_header_is_refused(sqlite_server: LiveServer) -> None:
    for value in ("Bearer nonsense", "Basic dXNlcjpwYXNz", f"Token {sqlite_server.token(1)}", "Bearer "):
        status, _ = await refusal(sqlite_server.ws_url, additional_headers={"Authorization": value})
        assert status == 401, value


async def test_identity_comes_from_sub_when_customer_id_is_absent(sqlite_server: LiveServer) -> None:
    now = int(time.time())
    token = hs256({"sub": "42", "iat": now, "exp": now + 600})
    async with await ChatClient.open(sqlite_server.ws_url, token) as client:
        # The frame's customer_id matches the identity from `sub` (compared as strings).
        turn = await client.turn(await client.chat("I am 42"))
        matching = await client.turn(await send_chat(client, customer_id=42))
    assert turn.status == "completed" and matching.status == "completed"
    assert turn.session_id is not None
    assert await sqlite_server.store.find_session("42", turn.session_id) is not None
    assert await sqlite_server.store.find_session("1", turn.session_id) is None


async def test_customer_id_claim_wins_over_sub(sqlite_server: LiveServer) -> None:
    token = hs256(claims_for("7") | {"sub": "8"})
    await assert_accepted(sqlite_server, token, customer_id="7")


async def test_numeric_customer_id_claim_is_compared_as_string(sqlite_server: LiveServer) -> None:
    now = int(time.time())
    await assert_accepted(sqlite_server, hs256({"customer_id": 9, "iat": now, "exp": now + 60}), "9")


# -- RS256 (identity provider) -----------------------------------------------------------------------


@pytest.fixture(params=["rs256+hs256", "rs256-only"])
async def idp_server(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[LiveServer]:
    """A server that trusts an identity provider's RS256 key, with audience and issuer checks."""
    overrides: dict[str, Any] = {
        "jwt_public_key": rsa_keypair()[1],
        "jwt_audience": AUDIENCE,
        "jwt_issuer": ISSUER,
    }
    if request.param == "rs256-only":
        overrides["jwt_secret"] = None
    async with live_server(make_settings(tmp_path, **overrides)) as live:
        yield live


async def test_rs256_token_is_accepted(idp_server: LiveServer) -> None:
    await assert_accepted(idp_server, rs256(idp_claims("11")), customer_id="11")


async def test_rs256_token_works_over_rest(idp_server: LiveServer) -> None:
    async with idp_server.http(None) as http:
        ok = await http.get(
            f"/api/v1/sessions/{uuid.uuid4()}", headers={"Authorization": f"Bearer {rs256(idp_claims())}"}
        )
        bad = await http.get(
            f"/api/v1/sessions/{uuid.uuid4()}",
            headers={"Authorization": f"Bearer {rs256(idp_claims(aud='elsewhere'))}"},
        )
    assert ok.status_code == 404  # authenticated; the session just does not exist
    assert bad.status_code == 401


@pytest.mark.parametrize(
    "changes",
    [
        {"aud": "someone-else"},
        {"aud": [f"{AUDIENCE}-other"]},
        {"iss": "https://evil.example.test/"},
        {"aud": None},
        {"iss": None},
        {"exp": -60},
        {"customer_id": None, "sub": None},
    ],
    ids=[
        "wrong-audience",
        "wrong-audience-list",
        "wrong-issuer",
        "no-audience",
        "no-issuer",
        "expired",
        "nobody",
    ],
)
async def test_rs256_token_with_wrong_claims_is_refused(
    idp_server: LiveServer, changes: dict[str, Any]
) -> None:
    if "exp" in changes:
        changes = {"exp": int(time.time()) + changes["exp"]}
    await assert_unauthorized(idp_server, rs256(idp_claims(**changes)))


async def test_rs256_token_from_another_key_is_refused(idp_server: LiveServer) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    await assert_unauthorized(idp_server, rs256(idp_claims(), other))


async def test_hs256_forged_with_the_public_key_is_refused(idp_server: LiveServer) -> None:
    """Algorithm confusion: the public key PEM (known to everyone) used as an HMAC secret."""
    pem = rsa_keypair()[1]
    header = {"alg": "HS256", "typ": "JWT"}
    if idp_server.settings.jwt_secret is not None:  # control: the same forgery with the real secret works
        await assert_accepted(idp_server, hand_signed(header, idp_claims("4"), SECRET.encode()), "4")
    for key in (pem, pem.strip(), pem.strip() + "\n"):
        await assert_unauthorized(idp_server, hand_signed(header, idp_claims(), key.encode()))


async def test_hs256_token_still_needs_audience_on_an_idp_server(idp_server: LiveServer) -> None:
    """With an audience configured, the shared-secret token must carry it too (or be refused)."""
    await assert_unauthorized(idp_server, hs256(claims_for("1")))


# -- identity inside the connection ------------------------------------------------------------------


async def test_frame_customer_id_mismatch_is_forbidden_and_connection_stays_open(
    sqlite_server: LiveServer,
) -> None:
    async with await sqlite_server.client(1) as client:
        refused = await client.turn(await send_chat(client, customer_id=2))
        assert refused.status == "error" and refused.error is not None
        assert (refused.error["stage"], refused.error["code"]) == ("auth", "forbidden")
        assert refused.kinds == ["working", "error", "fullProcessComplete"]

        refused_str = await client.turn(await send_chat(client, customer_id="01"))
        assert refused_str.error is not None and refused_str.error["code"] == "forbidden"

        # The connection is still open and still customer 1's: matching ids are accepted.
        for same in (1, "1"):
            later = await client.turn(await send_chat(client, customer_id=same))
            assert later.status == "completed" and later.session_id is not None
            assert await sqlite_server.store.find_session("1", later.session_id) is not None


async def test_other_customer_cannot_read_or_continue_a_session(sqlite_server: LiveServer) -> None:
    async with await sqlite_server.client(1) as owner:
        first = await owner.turn(await owner.chat("Customer 1's secret"))
    assert first.session_id is not None

    async with sqlite_server.http(2) as http:
        response = await http.get(f"/api/v1/sessions/{first.session_id}")
    assert response.status_code == 404
    assert "secret" not in response.text

    async with await sqlite_server.client(2) as intruder:
        attempt = await intruder.turn(await intruder.chat("Let me in", session_id=first.session_id))
    assert attempt.status == "error" and attempt.error is not None
    assert attempt.error["code"] == "session_not_found"
    assert "dbOperationExecuted" not in attempt.kinds

    rows = await sqlite_server.store.session_messages(uuid.UUID(first.session_id))
    assert [(m.role, m.customer_id) for m in rows] == [("user", "1"), ("assistant", "1")]
    async with sqlite_server.http(1) as http:
        assert (await http.get(f"/api/v1/sessions/{first.session_id}")).status_code == 200


@pytest.mark.parametrize("unusable", [None, ""])
async def test_unusable_customer_id_claim_falls_back_to_sub(
    sqlite_server: LiveServer, unusable: object
) -> None:
    now = int(time.time())
    token = hs256({"customer_id": unusable, "sub": "5", "iat": now, "exp": now + 60})
    await assert_accepted(sqlite_server, token, customer_id="5")


# -- identities the store can hold -------------------------------------------------------------------

UNUSABLE_IDENTITIES = {
    "256-chars": "7" * 256,
    "300-chars": "c" * 300,
    "nul": "cust\x00omer",
    "newline": "cust\nomer",
    "tab": "cust\tomer",
    "del": "cust\x7f",
    "c1-control": "cust\x85omer",
    "lone-surrogate": "cust\ud800omer",
}


@pytest.mark.parametrize("claim", ["customer_id", "sub"])
@pytest.mark.parametrize("identity", UNUSABLE_IDENTITIES.values(), ids=UNUSABLE_IDENTITIES.keys())
async def test_identity_the_store_cannot_hold_is_refused_on_ws_and_rest(
    server: LiveServer, claim: str, identity: str
) -> None:
    """Such a token used to open the socket, and then every turn failed (PostgreSQL: the column is 255
    wide and takes no NUL) or stored a customer id no log line could show safely."""
    now = int(time.time())
    token = hs256({claim: identity, "iat": now, "exp": now + 600})
    await assert_unauthorized(server, token)
    status, _ = await refusal(server.ws_url, additional_headers={"Authorization": f"Bearer {token}"})
    assert status == 401
    async with server.http(None) as http:
        response = await http.get("/api/v1/sessions", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401 and response.json()["code"] == "unauthorized"


async def test_an_unusable_customer_id_does_not_fall_back_to_sub(sqlite_server: LiveServer) -> None:
    """``sub`` names someone else: refusing is the only safe answer."""
    await assert_unauthorized(sqlite_server, hs256(claims_for("x" * 300) | {"sub": "5"}))


async def test_a_255_character_identity_is_accepted_on_ws_and_rest(server: LiveServer) -> None:
    identity = "é" * 255  # characters, not bytes
    await assert_accepted(server, hs256(claims_for(identity)), customer_id=identity)
    async with server.http(None) as http:
        response = await http.get(
            "/api/v1/sessions", headers={"Authorization": f"Bearer {hs256(claims_for(identity))}"}
        )
    assert response.status_code == 200 and len(response.json()["items"]) == 1
