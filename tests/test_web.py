"""The built-in page as files and routes: served at ``/``, shipped in the package, the dev token on a dev
server only. Its behaviour in a browser is tests/test_web_browser.py."""

from __future__ import annotations

import fnmatch
import gzip
import re
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from parley.api.web import WEB_DIR
from tests.conftest import LiveServer, live_server, make_settings

ROOT = Path(__file__).resolve().parent.parent
PAGE_BUDGET_BYTES = 40 * 1024  # all assets, gzipped; the README gives the current weight


@pytest.fixture
async def dev_server(tmp_path: Path) -> AsyncIterator[LiveServer]:
    async with live_server(make_settings(tmp_path, dev=True)) as live:
        yield live


def page_files() -> list[Path]:
    return sorted(p for p in WEB_DIR.rglob("*") if p.is_file())


def page_weight() -> int:
    """Bytes of every file of the page, each gzipped (as a server or proxy would send them)."""
    return sum(len(gzip.compress(p.read_bytes(), 9)) for p in page_files())


async def test_the_page_is_served_at_the_root(sqlite_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=sqlite_server.http_url) as http:
        page = await http.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'aria-label="Message"' in page.text
        assert (await http.head("/")).status_code == 200  # what an uptime check asks
        assert "script-src 'self'" in page.headers["content-security-policy"]
        for asset in re.findall(r'(?:src|href)="(assets/[^"]+)"', page.text):
            response = await http.get(f"/{asset}")
            assert response.status_code == 200, asset
        script = await http.get("/assets/app.js", headers={"Accept-Encoding": "gzip"})
        assert "javascript" in script.headers["content-type"]
        assert script.headers["content-encoding"] == "gzip"
        assert script.headers["cache-control"] == "no-cache" and script.headers["etag"]


async def test_other_routes_are_untouched(sqlite_server: LiveServer) -> None:
    async with sqlite_server.http() as http:
        assert (await http.get("/healthz")).json()["status"] == "ok"
        assert (await http.get("/docs")).status_code == 200
        assert (await http.get("/api/v1/sessions")).status_code == 200
        for unknown in ("/api/v1/nothing-here", "/assets/nothing-here.js", "/nothing-here"):
            response = await http.get(unknown)
            assert response.status_code == 404, unknown
            assert response.json()["code"] == "not_found"
        paths = (await http.get("/openapi.json")).json()["paths"]
        assert "/" not in paths and "/api/v1/dev/token" not in paths


async def test_no_dev_token_without_dev_mode(sqlite_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=sqlite_server.http_url) as http:
        response = await http.get("/api/v1/dev/token")
    assert response.status_code == 404 and response.json()["code"] == "not_found"


async def test_a_dev_server_gives_the_page_a_working_token(dev_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=dev_server.http_url) as http:
        response = await http.get("/api/v1/dev/token")
        assert response.status_code == 200
        body = response.json()
        assert body["customer_id"] == "1"
        sessions = await http.get("/api/v1/sessions", headers={"Authorization": f"Bearer {body['token']}"})
        assert sessions.status_code == 200
        # A page of another site whose name now points at 127.0.0.1 (DNS rebinding) is the same origin
        # to the browser, but it names its own host.
        rebound = await http.get("/api/v1/dev/token", headers={"Host": f"evil.example:{dev_server.port}"})
        assert rebound.status_code == 404 and rebound.json()["code"] == "not_found"
        assert (await http.get("/api/v1/dev/token", headers={"Host": "localhost"})).status_code == 200


def test_every_page_file_is_packaged() -> None:
    """A file the page needs but pyproject's package-data leaves out works here and breaks when installed."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    package = WEB_DIR.parent
    for path in page_files():
        relative = path.relative_to(package).as_posix()
        assert any(fnmatch.fnmatch(relative, p) for p in patterns["parley"]), f"{relative} is not packaged"


def test_vendored_code_is_listed_with_its_licence() -> None:
    vendor = WEB_DIR / "vendor"
    listed = [
        line.split()[0]
        for line in (vendor / "VERSIONS").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert listed, "VERSIONS lists no package"
    for package in listed:
        assert (vendor / f"{package}.js").is_file() and (vendor / f"{package}.LICENSE").is_file(), package
    names = {p.name for p in vendor.iterdir()} - {"VERSIONS"}
    assert names == {f"{p}.{ext}" for p in listed for ext in ("js", "LICENSE")}, (
        "vendor/ holds unlisted files"
    )


def test_module_imports_name_files_that_exist() -> None:
    """No build step: every import in the page's modules is a relative path to a shipped file."""
    for module in WEB_DIR.glob("*.js"):
        for target in re.findall(r'^import .* from "([^"]+)";$', module.read_text(), re.MULTILINE):
            assert target.startswith("./"), f"{module.name} imports {target}: not a relative path"
            assert (module.parent / target).is_file(), f"{module.name} imports {target}, which is missing"


def test_the_page_stays_light() -> None:
    weight = page_weight()
    assert weight < PAGE_BUDGET_BYTES, f"the page weighs {weight} bytes gzipped"
