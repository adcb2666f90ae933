"""The built-in chat page: ``/`` and its assets under ``/assets``, and (``--dev`` only) the dev token.

The page (parley/web/) is a client of the public API like any other; the server adds nothing for it but
the files and, on a dev server, a way for it to sign itself in.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse
from starlette.middleware.gzip import GZipMiddleware
from starlette.staticfiles import StaticFiles

from parley.api.deps import AppRuntime
from parley.auth import settings_token

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
DEV_CUSTOMER = "1"
DEV_TOKEN_TTL_S = 7 * 24 * 3600

# Model output is untrusted: even if the page's rendering let markup through, nothing inline would run,
# and no image could carry the conversation to another host.
PAGE_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)

# Cross-origin isolation: nothing of another origin may load, and performance.now() gets its fine resolution
# (the page measures its own render time per delta).
ISOLATED = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp"}

page_router = APIRouter(include_in_schema=False)
dev_router = APIRouter(tags=["dev"])


@page_router.get("/")
async def index() -> FileResponse:
    headers = {"Content-Security-Policy": PAGE_POLICY, "Cache-Control": "no-cache", **ISOLATED}
    return FileResponse(WEB_DIR / "index.html", headers=headers)


@dev_router.get("/dev/token")
async def dev_token(runtime: AppRuntime) -> dict[str, str]:
    """Dev server only (``parley serve --dev``; elsewhere this route does not exist): a token for customer 1,
    valid 7 days, so the built-in page signs itself in."""
    token = settings_token(runtime.settings, DEV_CUSTOMER, DEV_TOKEN_TTL_S)
    return {"token": token, "customer_id": DEV_CUSTOMER}


def install(app: FastAPI, dev: bool) -> None:
    """Serve the page at ``/`` and its files at ``/assets``; the dev token route only on a dev server."""
    app.include_router(page_router)
    app.mount("/assets", GZipMiddleware(StaticFiles(directory=WEB_DIR)), name="assets")
    if dev:
        app.include_router(dev_router, prefix="/api/v1")
