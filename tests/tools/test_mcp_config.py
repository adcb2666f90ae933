"""The MCP file, tool naming and result mapping: no server needed."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from mcp import types

from parley.tools.base import TOOL_NAME
from parley.tools.mcp import HttpServerConfig, StdioServerConfig, exposed_name, load_mcp_config, result_text

GOOD = """
[mcp_servers.files]
transport = "stdio"
command = "npx"
args = ["-y", "@modelcontextprotocol/server-filesystem", "/srv/shared"]
env = { LOG_LEVEL = "info" }
env_vars = ["GITHUB_TOKEN"]
tools = ["read_file"]

[mcp_servers.docs-search]
transport = "http"
url = "https://mcp.example.com/mcp"
headers = { "X-Team" = "support" }
header_env = { Authorization = "DOCS_MCP_AUTHORIZATION" }
startup_timeout_s = 5

[mcp_servers.old]
transport = "stdio"
command = "old-server"
enabled = false
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mcp.toml"
    path.write_text(text)
    return path


def test_loads_enabled_servers(tmp_path: Path) -> None:
    files, docs = load_mcp_config(write(tmp_path, GOOD))
    assert isinstance(files, StdioServerConfig)
    assert (files.name, files.command, files.args[-1]) == ("files", "npx", "/srv/shared")
    assert (files.env, files.env_vars, files.tools) == (
        {"LOG_LEVEL": "info"},
        ["GITHUB_TOKEN"],
        ["read_file"],
    )
    assert files.startup_timeout_s == 30
    assert isinstance(docs, HttpServerConfig)
    assert (docs.name, docs.url, docs.startup_timeout_s) == ("docs-search", "https://mcp.example.com/mcp", 5)
    assert docs.header_env == {"Authorization": "DOCS_MCP_AUTHORIZATION"}


def test_an_empty_file_has_no_servers(tmp_path: Path) -> None:
    assert load_mcp_config(write(tmp_path, "")) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[mcp_servers.x\n", "cannot read the MCP file"),
        ("[servers.x]\ntransport='stdio'\ncommand='a'", "unknown top-level keys ['servers']"),
        ("mcp_servers = 3", "must be a table"),
        ("[mcp_servers]\nx = 3", "mcp_servers.x must be a table"),
        (
            "[mcp_servers.x]\ncommand='a'",
            "mcp_servers.x: Unable to extract tag using discriminator 'transport'",
        ),
        ("[mcp_servers.x]\ntransport='carrier-pigeon'", "mcp_servers.x: Input tag 'carrier-pigeon'"),
        ("[mcp_servers.x]\ntransport='stdio'", "mcp_servers.x: command: Field required"),
        (
            "[mcp_servers.x]\ntransport='stdio'\ncommand='a'\nshell=true",
            "shell: Extra inputs are not permitted",
        ),
        (
            "[mcp_servers.x]\ntransport='http'\nurl='ftp://h/mcp'",
            "url: Value error, url must start with http",
        ),
        ("[mcp_servers.x]\ntransport='stdio'\ncommand='a'\nname='y'", "'name' is not a setting"),
        ("[mcp_servers.a__b]\ntransport='stdio'\ncommand='a'", "name: Value error, server names are"),
        ("[mcp_servers.x]\ntransport='stdio'\ncommand='a'\nstartup_timeout_s=0", "startup_timeout_s: Input"),
    ],
)
def test_mistakes_name_the_table(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ValueError, match="MCP file") as info:
        load_mcp_config(write(tmp_path, text))
    assert message in str(info.value)


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the MCP file"):
        load_mcp_config(tmp_path / "absent.toml")


@pytest.mark.parametrize("name", ["a_", "_a", "a__b", "a-", "a b", "a.b", "x" * 33, ""])
def test_server_names_keep_tool_names_unambiguous(name: str) -> None:
    with pytest.raises(ValueError, match="server names"):
        StdioServerConfig(name=name, transport="stdio", command="x")


def test_exposed_names() -> None:
    assert exposed_name("files", "read_file") == "files__read_file"
    dotted = exposed_name("files", "fs.read")
    assert dotted.startswith("files__fs_read_") and TOOL_NAME.match(dotted)
    assert dotted == exposed_name("files", "fs.read")  # stable
    assert exposed_name("files", "fs_read") != dotted  # no clash with the cleaned spelling
    long = exposed_name("s" * 32, "t" * 128)
    assert len(long) == 64 and TOOL_NAME.match(long)
    assert long != exposed_name("s" * 32, "t" * 127)


def test_result_text_maps_content() -> None:
    png = base64.b64encode(b"\x89PNG" + b"\0" * 96).decode()
    result = types.CallToolResult(
        content=[
            types.TextContent(text="hello"),
            types.ImageContent(data=png, mime_type="image/png"),
            types.ResourceLink(name="report", uri="file:///r.pdf"),
            types.EmbeddedResource(resource=types.TextResourceContents(uri="file:///a.txt", text="inline")),
            types.EmbeddedResource(
                resource=types.BlobResourceContents(uri="file:///b.bin", blob="AAAA", mime_type="x/y")
            ),
        ]
    )
    assert result_text(result).split("\n") == [
        "hello",
        "[image: image/png, 100 bytes, not shown]",
        "[resource link: file:///r.pdf]",
        "inline",
        "[resource: file:///b.bin, x/y, not shown]",
    ]


def test_result_text_falls_back_to_structured_content() -> None:
    result = types.CallToolResult(content=[], structured_content={"answer": 42})
    assert result_text(result) == '{"answer": 42}'
