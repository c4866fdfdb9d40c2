"""A scripted MCP server for the isolation, shutdown and stream-bound tests:
it samples, elicits, logs, asks for roots, emits resource updates and bursts
of notifications when a tool tells it to, and holds calls open until the
test releases them.

Built on the official Python SDK's low-level `Server`, served over stdio,
the legacy HTTP+SSE transport or Streamable HTTP (the last two on
127.0.0.1 only).

    scripted_server.py --gate-dir DIR [--transport stdio|sse|streamable-http] [--port 0]

Over HTTP it prints one JSON line to stdout once listening:
    {"ready": true, "url": "http://127.0.0.1:PORT/mcp", "port": PORT, "transport": ...}
(for SSE the url is the `/sse` endpoint) and runs until terminated.

Gates are files in DIR, so a test can order calls without making calls of
its own (which would change who has calls in flight on a shared
connection): `hold` creates `started-GATE` and returns once `release-GATE`
exists.

The server keeps, for its one connection, what a real server keeps: the log
level last set (`logging/setLevel`; log messages below it are not sent, none
are filtered before a level is set), the resource URIs subscribed to
(`notify_updated` only announces a subscribed URI), and the number of
`notifications/roots/list_changed` received. It logs (info) while handling
`tools/list`, `resources/subscribe`, `resources/unsubscribe` and
`logging/setLevel`, so a test can see where messages sent during those
requests end up.

Tools (every result is one text item holding JSON):
    hold(gate)                      log "hold started GATE", create started-GATE,
                                    wait (at most 60 s) for release-GATE
    sample(prompt)                  sampling/createMessage with `prompt`;
                                    {"answer": text|null, "error": message|null}
    elicit_twice(first, second, gate="")
                                    elicitation/create with `first`; then, with a
                                    gate, once release-GATE exists (whether or not
                                    the first was answered), or else after the
                                    first answer, elicitation/create with
                                    `second`; with a gate, creates
                                    second-asked-GATE just before asking and
                                    second-settled-GATE once the second is
                                    answered or refused; {"first": …, "second": …}
    log(level, message, related=true)
                                    notifications/message at `level` on the call's
                                    stream (related) or on the connection's own
                                    stream; {"sent": bool, "level": current}
    log_levels(message, gate="")    one log message per level debug, info,
                                    warning, error: data MESSAGE-LEVEL; with a
                                    gate, then MESSAGE-last at emergency, and
                                    the result once release-GATE exists
    progress(message, related=true) notifications/progress with `message`: with
                                    the call's token on its stream (related), or
                                    with the token "unsolicited" on the
                                    connection's stream
    roots()                         roots/list; {"roots": [...]} or {"error": …}
    current_level()                 {"level": last level set, or null}
    roots_notifications()           {"count": notifications/roots/list_changed seen}
    notify_updated(uri)             notifications/resources/updated for `uri` if
                                    subscribed; {"sent": bool, "subscribed": [...]}
    notify_list_changed()           notifications/tools/list_changed
    flood(count, uri)               as fast as it can, `count` times: one
                                    notifications/resources/updated for `uri`
                                    (when subscribed) and one list_changed
                                    notification (tools, prompts, resources in
                                    turn); {"updated": n, "list_changed": n}
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import warnings
from typing import Any

sys.dont_write_bytecode = True
warnings.filterwarnings("ignore")

import anyio  # noqa: E402
import mcp_types as types  # noqa: E402
import uvicorn  # noqa: E402
from mcp.server.lowlevel.server import NotificationOptions, Server  # noqa: E402
from mcp.server.sse import SseServerTransport  # noqa: E402
from mcp.server.stdio import stdio_server  # noqa: E402
from mcp.server.transport_security import TransportSecuritySettings  # noqa: E402
from mcp.shared.message import ServerMessageMetadata  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import Response  # noqa: E402
from starlette.routing import Mount, Route  # noqa: E402

LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]
GATE_POLL_S = 0.02
GATE_LIMIT_S = 60.0


def _schema(props: dict[str, str], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {name: {"type": kind} for name, kind in props.items()},
        "required": required or [],
    }


TOOLS = [
    {"name": "hold", "description": "Wait until the gate is released.", "inputSchema": _schema({"gate": "string"}, ["gate"])},
    {"name": "sample", "description": "Ask the client to sample.", "inputSchema": _schema({"prompt": "string"}, ["prompt"])},
    {
        "name": "elicit_twice",
        "description": "Ask the client twice.",
        "inputSchema": _schema({"first": "string", "second": "string", "gate": "string"}, ["first", "second"]),
    },
    {
        "name": "log",
        "description": "Send a log message.",
        "inputSchema": _schema({"level": "string", "message": "string", "related": "boolean"}, ["level", "message"]),
    },
    {
        "name": "log_levels",
        "description": "Log at four levels.",
        "inputSchema": _schema({"message": "string", "gate": "string"}, ["message"]),
    },
    {
        "name": "progress",
        "description": "Send a progress notification.",
        "inputSchema": _schema({"message": "string", "related": "boolean"}, ["message"]),
    },
    {"name": "roots", "description": "Ask the client for its roots.", "inputSchema": _schema({})},
    {"name": "current_level", "description": "The log level last set.", "inputSchema": _schema({})},
    {"name": "roots_notifications", "description": "Roots change notifications seen.", "inputSchema": _schema({})},
    {"name": "notify_updated", "description": "Announce a resource update.", "inputSchema": _schema({"uri": "string"}, ["uri"])},
    {"name": "notify_list_changed", "description": "Announce a tool list change.", "inputSchema": _schema({})},
    {
        "name": "flood",
        "description": "Send a burst of resource updates and list changes.",
        "inputSchema": _schema({"count": "integer", "uri": "string"}, ["count", "uri"]),
    },
]


class State:
    def __init__(self, gate_dir: str) -> None:
        self.gate_dir = gate_dir
        self.level: str | None = None
        self.subscribed: set[str] = set()
        self.roots_changed = 0

    def gate(self, kind: str, name: str) -> str:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        return os.path.join(self.gate_dir, f"{kind}-{safe}")

    def touch(self, kind: str, name: str) -> None:
        with open(self.gate(kind, name), "w", encoding="utf-8") as fh:
            fh.write("1")

    async def wait_for(self, kind: str, name: str) -> bool:
        path = self.gate(kind, name)
        for _ in range(int(GATE_LIMIT_S / GATE_POLL_S)):
            if os.path.exists(path):
                return True
            await anyio.sleep(GATE_POLL_S)
        return False

    def admits(self, level: str) -> bool:
        return self.level is None or LEVELS.index(level) >= LEVELS.index(self.level)


def _text(obj: Any) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": json.dumps(obj, sort_keys=True)}]}


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def build_server(state: State) -> Server:
    async def log(ctx: Any, level: str, message: str, related: bool = True) -> bool:
        if level not in LEVELS or not state.admits(level):
            return False
        await ctx.session.send_log_message(
            level, message, logger="scripted", related_request_id=ctx.request_id if related else None
        )
        return True

    def related(ctx: Any) -> ServerMessageMetadata:
        return ServerMessageMetadata(related_request_id=ctx.request_id)

    async def elicit(ctx: Any, message: str) -> dict[str, Any]:
        schema = {"type": "object", "properties": {"name": {"type": "string"}}}
        try:
            answer = await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_id)
            return {"answer": answer.model_dump(by_alias=True, mode="json", exclude_none=True), "error": None}
        except Exception as exc:  # the refusal is the outcome under test
            return {"answer": None, "error": _error_text(exc)}

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> dict[str, Any]:
        args = params.arguments or {}
        name = params.name
        if name == "hold":
            gate = str(args["gate"])
            await log(ctx, "info", f"hold started {gate}")
            state.touch("started", gate)
            released = await state.wait_for("release", gate)
            return _text({"released": released, "gate": gate})
        if name == "sample":
            prompt = str(args["prompt"])
            try:
                result = await ctx.session.create_message(
                    messages=[types.SamplingMessage(role="user", content=types.TextContent(type="text", text=prompt))],
                    max_tokens=32,
                    related_request_id=ctx.request_id,
                )
                content = result.content
                text = content.text if isinstance(content, types.TextContent) else json.dumps(str(content))
                return _text({"answer": text, "error": None})
            except Exception as exc:
                return _text({"answer": None, "error": _error_text(exc)})
        if name == "elicit_twice":
            gate = str(args.get("gate") or "")
            outcome: dict[str, Any] = {}
            async with anyio.create_task_group() as tg:
                first_done = anyio.Event()

                async def first() -> None:
                    outcome["first"] = await elicit(ctx, str(args["first"]))
                    first_done.set()

                tg.start_soon(first)
                if gate:
                    await state.wait_for("release", gate)
                    state.touch("second-asked", gate)
                else:
                    await first_done.wait()
                outcome["second"] = await elicit(ctx, str(args["second"]))
                if gate:
                    state.touch("second-settled", gate)
            return _text(outcome)
        if name == "log":
            sent = await log(ctx, str(args["level"]), str(args["message"]), bool(args.get("related", True)))
            return _text({"sent": sent, "level": state.level})
        if name == "log_levels":
            sent = [lv for lv in ("debug", "info", "warning", "error") if await log(ctx, lv, f"{args['message']}-{lv}")]
            gate = str(args.get("gate") or "")
            if gate:
                await log(ctx, "emergency", f"{args['message']}-last")
                await state.wait_for("release", gate)
            return _text({"sent": sent, "level": state.level})
        if name == "progress":
            message = str(args["message"])
            if args.get("related", True):
                meta = (ctx.params or {}).get("_meta") or {}
                token = meta.get("progressToken")
                if token is None:
                    return _text({"sent": False, "reason": "no progress token"})
                await ctx.session.send_progress_notification(
                    token, 1, 2, message, related_request_id=ctx.request_id
                )
            else:
                await ctx.session.send_progress_notification("unsolicited", 1, 2, message)
            return _text({"sent": True})
        if name == "roots":
            try:
                result = await ctx.session.send_request(
                    types.ListRootsRequest(), types.ListRootsResult, metadata=related(ctx)
                )
                return _text(result.model_dump(by_alias=True, mode="json", exclude_none=True))
            except Exception as exc:
                return _text({"error": _error_text(exc)})
        if name == "current_level":
            return _text({"level": state.level})
        if name == "roots_notifications":
            return _text({"count": state.roots_changed})
        if name == "notify_updated":
            uri = str(args["uri"])
            sent = uri in state.subscribed
            if sent:
                await ctx.session.send_resource_updated(uri)
            return _text({"sent": sent, "subscribed": sorted(state.subscribed)})
        if name == "notify_list_changed":
            await ctx.session.send_tool_list_changed()
            return _text({"sent": True})
        if name == "flood":
            count = int(args["count"])
            uri = str(args["uri"])
            changes = [
                ctx.session.send_tool_list_changed,
                ctx.session.send_prompt_list_changed,
                ctx.session.send_resource_list_changed,
            ]
            updated = 0
            for i in range(count):
                if uri in state.subscribed:
                    await ctx.session.send_resource_updated(uri)
                    updated += 1
                await changes[i % len(changes)]()
            return _text({"updated": updated, "list_changed": count})
        return {"content": [{"type": "text", "text": f"unknown tool {name}"}], "isError": True}

    async def list_tools(ctx: Any, params: Any) -> dict[str, Any]:
        await log(ctx, "info", "handled tools/list")
        return {"tools": TOOLS}

    async def list_resources(ctx: Any, params: Any) -> dict[str, Any]:
        return {"resources": [{"uri": "test://doc", "name": "doc", "mimeType": "text/plain"}]}

    async def read_resource(ctx: Any, params: types.ReadResourceRequestParams) -> dict[str, Any]:
        return {"contents": [{"uri": str(params.uri), "mimeType": "text/plain", "text": f"content of {params.uri}"}]}

    async def subscribe(ctx: Any, params: types.SubscribeRequestParams) -> dict[str, Any]:
        state.subscribed.add(str(params.uri))
        await log(ctx, "info", f"handled resources/subscribe {params.uri}")
        return {}

    async def unsubscribe(ctx: Any, params: types.UnsubscribeRequestParams) -> dict[str, Any]:
        state.subscribed.discard(str(params.uri))
        await log(ctx, "info", f"handled resources/unsubscribe {params.uri}")
        return {}

    async def set_level(ctx: Any, params: types.SetLevelRequestParams) -> dict[str, Any]:
        state.level = str(params.level)
        await log(ctx, state.level, f"handled logging/setLevel {state.level}")
        return {}

    async def roots_changed(ctx: Any, params: Any) -> None:
        state.roots_changed += 1

    return Server(
        "bastion-scripted",
        version="1.0.0",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
        on_list_resources=list_resources,
        on_read_resource=read_resource,
        on_subscribe_resource=subscribe,
        on_unsubscribe_resource=unsubscribe,
        on_set_logging_level=set_level,
        on_roots_list_changed=roots_changed,
    )


def sse_app(server: Server) -> Starlette:
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=["127.0.0.1:*", "localhost:*"],
        allowed_origins=["http://127.0.0.1:*", "http://localhost:*"],
    )
    sse = SseServerTransport("/messages/", security_settings=security)

    async def handle_sse(request: Request) -> Response:
        async with sse.connect_sse(request.scope, request.receive, request._send) as streams:  # noqa: SLF001
            await server.run(streams[0], streams[1], init_options(server))
        return Response()

    return Starlette(routes=[Route("/sse", endpoint=handle_sse, methods=["GET"]), Mount("/messages/", app=sse.handle_post_message)])


def init_options(server: Server) -> Any:
    return server.create_initialization_options(NotificationOptions(tools_changed=True, resources_changed=True))


def serve_http(app: Any, port: int, path: str, transport: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=1))

    async def serve() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            for _ in range(500):  # up to 5 s for startup
                if server.started:
                    break
                await anyio.sleep(0.01)
            if not server.started:
                raise RuntimeError("server did not start")
            ready = {"ready": True, "url": f"http://127.0.0.1:{port}{path}", "port": port, "transport": transport}
            print(json.dumps(ready), flush=True)
            signal.signal(signal.SIGTERM, _exit_now)
            signal.signal(signal.SIGINT, _exit_now)

    anyio.run(serve)


def _exit_now(signum: int, frame: Any) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transport", choices=["stdio", "sse", "streamable-http"], default="stdio")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: pick a free one)")
    parser.add_argument("--gate-dir", required=True, help="directory of the gate files")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    state = State(args.gate_dir)
    server = build_server(state)
    if args.transport == "stdio":

        async def run() -> None:
            async with stdio_server() as (read_stream, write_stream):
                await server.run(read_stream, write_stream, init_options(server))

        anyio.run(run)
    elif args.transport == "sse":
        serve_http(sse_app(server), args.port, "/sse", "sse")
    else:
        app = server.streamable_http_app(host="127.0.0.1")
        serve_http(app, args.port, "/mcp", "streamable-http")


if __name__ == "__main__":
    main()
