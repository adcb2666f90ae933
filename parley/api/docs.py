"""``/docs`` and ``/redoc`` served with their own assets (parley/static/docs, from scripts/vendor-docs), so
they work with no network; ``/asyncapi.json`` describes the WebSocket."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from parley.asyncapi import document

ASSETS = Path(__file__).resolve().parent.parent / "static" / "docs"
ASSETS_PATH = "/docs/assets"


def install(app: FastAPI) -> None:
    """Routes for /docs, /redoc and /asyncapi.json, and the assets they load."""
    app.mount(ASSETS_PATH, StaticFiles(directory=ASSETS), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} API",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/swagger-ui/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},  # no badge from an online validator
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} API",
            redoc_js_url=f"{root}{ASSETS_PATH}/redoc/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_PATH}/swagger-ui/favicon-32x32.png",
            with_google_fonts=False,
        )

    @app.get("/asyncapi.json", include_in_schema=False)
    async def asyncapi(request: Request) -> JSONResponse:
        secure = request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
        host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
        return JSONResponse(document(app.version, host, secure))


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")
