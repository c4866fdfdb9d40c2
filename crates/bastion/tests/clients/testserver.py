"""A small MCP server for exercising the client scripts in this directory.

Built on the official Python SDK's `MCPServer`. It serves either Streamable
HTTP (stateful by default; the same endpoint also answers the stateless
2026-07-28 era, since the SDK routes by protocol version) or the legacy
HTTP+SSE transport, on 127.0.0.1 only.

    testserver.py [--port 0] [--transport streamable-http|sse] [--token TOKEN]
                  [--json-response] [--stateless] [--page-size N]
                  [--request-log FILE] [--allow-any-host]

Once listening it prints one JSON line to stdout:
    {"ready": true, "url": "http://127.0.0.1:PORT/mcp", "port": PORT, "transport": ...}
(for SSE the url is the `/sse` endpoint). It runs until terminated (SIGTERM/SIGINT).

With `--token`, every HTTP request must carry `Authorization: Bearer TOKEN`,
otherwise it is answered 401 without reaching the MCP layer.
`--request-log FILE` appends one JSON line per HTTP request (method, path,
MCP-related headers, whether an Authorization header was present, status).

Tools: echo, slow_echo, crossed_echo (answers with the previous call's
text: a negative control for concurrent_calls.py), progress_tool (progress + log notifications),
sampling_tool (asks the client to sample), elicit_tool (asks the client for
input), request_headers (returns the HTTP headers this server received),
fail_tool (returns isError). Resource `test://greeting`, template
`test://echo/{text}`. Prompt `greet`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import time
import warnings
from typing import Annotated, Any

sys.dont_write_bytecode = True

import anyio  # noqa: E402
import uvicorn  # noqa: E402
from mcp.server.mcpserver import (  # noqa: E402
    Context,
    Elicit,
    ElicitationResult,
    MCPServer,
    Resolve,
    Sample,
)
from mcp.server.transport_security import TransportSecuritySettings  # noqa: E402
from mcp_types import (  # noqa: E402
    CreateMessageResult,
    ListToolsResult,
    PaginatedRequestParams,
    SamplingMessage,
    TextContent,
)
from pydantic import BaseModel  # noqa: E402

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", message=".*deprecated.*")


class PagedServer(MCPServer):
    """MCPServer whose tools/list is split into pages of `page_size` (0: one page)."""

    page_size: int = 0

    async def _handle_list_tools(self, ctx: Any, params: PaginatedRequestParams | None) -> ListToolsResult:
        tools = await self.list_tools()
        if self.page_size <= 0:
            return ListToolsResult(tools=tools)
        start = int(params.cursor) if params is not None and params.cursor else 0
        end = start + self.page_size
        next_cursor = str(end) if end < len(tools) else None
        return ListToolsResult(tools=tools[start:end], next_cursor=next_cursor)


class Person(BaseModel):
    name: str
    age: int = 0


# Resolvers live at module level: tool annotations are evaluated against module globals.
def ask_llm(prompt: str) -> Sample:
    return Sample(
        [SamplingMessage(role="user", content=TextContent(type="text", text=prompt))],
        max_tokens=64,
    )


def ask_person(message: str) -> Elicit[Person]:
    return Elicit(message, Person)


def build_server(page_size: int) -> MCPServer:
    mcp = PagedServer(
        name="bastion-testserver",
        version="1.0.0",
        instructions="Test server for the client scripts.",
        log_level="WARNING",
    )
    mcp.page_size = page_size

    @mcp.tool()
    def echo(text: str) -> str:
        """Return `text` unchanged."""
        return text

    @mcp.tool()
    async def slow_echo(text: str, delay_ms: int = 100) -> str:
        """Return `text` after `delay_ms` milliseconds."""
        await anyio.sleep(max(0, delay_ms) / 1000)
        return text

    crossed = {"last": "nothing yet"}

    @mcp.tool()
    def crossed_echo(text: str) -> str:
        """A deliberately broken echo: returns the text of the previous call (negative control)."""
        previous, crossed["last"] = crossed["last"], text
        return previous

    @mcp.tool()
    async def progress_tool(ctx: Context, steps: int = 3) -> str:
        """Emit `steps` progress notifications and log messages, then return."""
        steps = max(0, min(steps, 100))
        for i in range(steps):
            await ctx.report_progress(i + 1, steps, f"step {i + 1}")
            await ctx.info(f"log {i + 1}", logger_name="testserver")
            await anyio.sleep(0.01)
        return f"done {steps}"

    @mcp.tool()
    async def sampling_tool(
        sampled: Annotated[CreateMessageResult, Resolve(ask_llm)], prompt: str = "say something"
    ) -> str:
        """Ask the client's LLM to answer `prompt`; return the sampled text."""
        content = sampled.content
        return content.text if isinstance(content, TextContent) else json.dumps(content.model_dump(mode="json"))

    @mcp.tool()
    async def elicit_tool(
        answer: Annotated[ElicitationResult[Person], Resolve(ask_person)], message: str = "Who are you?"
    ) -> str:
        """Ask the client for a name and an age; return the outcome as JSON text."""
        data = getattr(answer, "data", None)
        return json.dumps(
            {"action": answer.action, "content": data.model_dump() if data is not None else None}, sort_keys=True
        )

    @mcp.tool()
    def request_headers(ctx: Context) -> dict[str, str]:
        """Return the HTTP request headers this server received for this call."""
        headers = ctx.headers or {}
        return {str(k).lower(): str(v) for k, v in headers.items()}

    @mcp.tool()
    def fail_tool(message: str = "failed on purpose") -> str:
        """Always fail (the result has isError: true)."""
        raise ValueError(message)

    @mcp.resource("test://greeting", mime_type="text/plain")
    def greeting() -> str:
        """A fixed greeting."""
        return "Hello from testserver"

    @mcp.resource("test://echo/{text}", mime_type="text/plain")
    def echo_resource(text: str) -> str:
        """Echo the URI segment."""
        return f"echo:{text}"

    @mcp.prompt()
    def greet(name: str) -> str:
        """Greet someone."""
        return f"Please greet {name} warmly."

    return mcp


class BearerGuard:
    """ASGI middleware: 401 unless `Authorization: Bearer <token>`; optional request log."""

    def __init__(self, app: Any, token: str | None, log_path: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token else None
        self.log_path = log_path

    def _log(self, entry: dict[str, Any]) -> None:
        if not self.log_path:
            return
        with open(self.log_path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        entry: dict[str, Any] = {
            "time": time.time(),
            "method": scope["method"],
            "path": scope["path"],
            "query": scope.get("query_string", b"").decode("latin-1"),
            "authorization": "authorization" in headers,
            "headers": {
                k: v
                for k, v in headers.items()
                if k.startswith("mcp-")
                or k in ("accept", "content-type", "last-event-id", "origin", "host", "user-agent")
            },
        }
        if self.expected is not None and headers.get("authorization", "").encode("latin-1") != self.expected:
            entry["status"] = 401
            self._log(entry)
            body = json.dumps({"error": "unauthorized"}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"www-authenticate", b'Bearer realm="testserver"'),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                entry["status"] = message["status"]
                for k, v in message.get("headers", []):
                    key = k.decode("latin-1").lower()
                    if key in ("content-type", "mcp-session-id"):
                        entry.setdefault("response", {})[key] = v.decode("latin-1")
                self._log(entry)
            await send(message)

        await self.app(scope, receive, send_wrapper)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: pick a free one)")
    parser.add_argument("--transport", choices=["streamable-http", "sse"], default="streamable-http")
    parser.add_argument("--token", default=None, help="require Authorization: Bearer TOKEN")
    parser.add_argument("--json-response", action="store_true", help="answer POSTs with JSON instead of SSE")
    parser.add_argument("--stateless", action="store_true", help="2025-era stateless mode (no Mcp-Session-Id)")
    parser.add_argument("--page-size", type=int, default=0, help="paginate tools/list (0: no pagination)")
    parser.add_argument("--request-log", default=None, help="append one JSON line per HTTP request to FILE")
    parser.add_argument("--allow-any-host", action="store_true", help="disable Host/Origin (DNS rebinding) checks")
    args = parser.parse_args()

    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    mcp = build_server(args.page_size)
    security = (
        TransportSecuritySettings(enable_dns_rebinding_protection=False) if args.allow_any_host else None
    )
    if args.transport == "sse":
        app = mcp.sse_app(transport_security=security, host="127.0.0.1")
        path = "/sse"
    else:
        app = mcp.streamable_http_app(
            json_response=args.json_response,
            stateless_http=args.stateless,
            transport_security=security,
            host="127.0.0.1",
        )
        path = "/mcp"

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(128)
    port = sock.getsockname()[1]

    config = uvicorn.Config(
        BearerGuard(app, args.token, args.request_log),
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)

    async def serve() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            for _ in range(500):  # up to 5 s for startup
                if server.started:
                    break
                await anyio.sleep(0.01)
            if not server.started:
                raise RuntimeError("server did not start")
            print(
                json.dumps(
                    {
                        "ready": True,
                        "url": f"http://127.0.0.1:{port}{path}",
                        "port": port,
                        "transport": args.transport,
                    }
                ),
                flush=True,
            )
            # Replace the handlers uvicorn installed while serving: a test server
            # needs no graceful shutdown, and open streams would delay one.
            signal.signal(signal.SIGTERM, _exit_now)
            signal.signal(signal.SIGINT, _exit_now)

    anyio.run(serve)


def _exit_now(signum: int, frame: Any) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
