"""Session-era MCP client (Streamable HTTP with the `initialize` handshake).

Uses the official Python SDK: `streamable_http_client` + `ClientSession`.
Without `--protocol-version` the SDK's own `initialize()` runs, which offers
the SDK's newest handshake-era version (2025-11-25 for mcp 2.3.0); with it, the
same initialize request offers the requested version instead.

    session_client.py --url URL [--token TOKEN] [--timeout 60]
        [--protocol-version VERSION] --action ACTION [action options]

Actions and their output (besides "ok", "protocolVersion", "sessionId"):
    initialize                      serverInfo, capabilities, instructions
    list-tools                      tools (names), items, pages
    call-tool --tool N [--args J] [--progress]
                                    result (CallToolResult), text, logs, progress
    list-resources                  resources (URIs), items, pages
    list-resource-templates         resourceTemplates, items, pages
    read-resource --uri U           result (ReadResourceResult)
    list-prompts                    prompts (names), items, pages
    get-prompt --name N [--args J]  result (GetPromptResult)
    sampling-tool --tool N [--args J] [--elicit J]
                                    result, text, samplingRequests, elicitationRequests, logs
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

sys.dont_write_bytecode = True

import _common as c  # noqa: E402
from mcp.client.session import ClientSession  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

ACTIONS = [
    "initialize",
    "list-tools",
    "call-tool",
    "list-resources",
    "list-resource-templates",
    "read-resource",
    "list-prompts",
    "get-prompt",
    "sampling-tool",
]


def add_action_args(p: argparse.ArgumentParser, actions: list[str]) -> None:
    p.add_argument("--action", required=True, choices=actions)
    p.add_argument("--tool", help="tool name (call-tool, sampling-tool)")
    p.add_argument("--args", default=None, help="JSON object of tool/prompt arguments")
    p.add_argument("--progress", action="store_true", help="request and collect progress notifications")
    p.add_argument("--uri", help="resource URI (read-resource)")
    p.add_argument("--name", help="prompt name (get-prompt)")
    p.add_argument(
        "--elicit",
        default=None,
        help="JSON object the elicitation callback accepts with (default: decline)",
    )
    p.add_argument(
        "--log-level",
        default=None,
        help="send logging/setLevel with this level before the action (session era)",
    )
    p.add_argument("--settle", type=float, default=0.2, help="seconds to wait for late notifications (default 0.2)")
    p.add_argument(
        "--no-output-validation",
        action="store_true",
        help="skip the SDK's output-schema check after tools/call (it sends tools/list when the tool "
        "was not listed yet, and fails the call if that tools/list fails)",
    )


def check_action_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.action in ("call-tool", "sampling-tool") and not args.tool:
        p.error(f"--action {args.action} needs --tool")
    if args.action == "read-resource" and not args.uri:
        p.error("--action read-resource needs --uri")
    if args.action == "get-prompt" and not args.name:
        p.error("--action get-prompt needs --name")
    args.arguments = c.parse_json_object(p, args.args, "--args")
    args.elicit_content = c.parse_json_object(p, args.elicit, "--elicit") if args.elicit is not None else None


async def run_action(session: ClientSession, args: argparse.Namespace, callbacks: c.Callbacks) -> dict[str, Any]:
    """Perform one action on an initialized session-era `ClientSession`."""
    if args.log_level:
        await session.set_logging_level(args.log_level)
    if args.action == "initialize":
        return {}
    out = await c.shared_action(session, session, c.session_page_fetcher(session), args, callbacks)
    if out is None:
        raise ValueError(f"unknown action {args.action}")
    return out


async def run_session(read: Any, write: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The handshake and the action on a session-era transport's streams."""
    callbacks = c.Callbacks(args.elicit_content)
    async with ClientSession(
        read,
        write,
        read_timeout_seconds=args.timeout,
        sampling_callback=callbacks.sampling,
        elicitation_callback=callbacks.elicitation,
        logging_callback=callbacks.logging,
        client_info=c.CLIENT_INFO,
    ) as session:
        init = await c.handshake(session, args.protocol_version)
        out = c.initialize_summary(init) if args.action == "initialize" else {"protocolVersion": init.protocol_version}
        out.update(await run_action(session, args, callbacks))
    return out


def main() -> None:
    p = c.base_parser(__doc__ or "")
    p.add_argument(
        "--protocol-version",
        default=None,
        help="protocol version to offer in initialize (default: the SDK's choice)",
    )
    p.add_argument("--no-terminate", action="store_true", help="do not DELETE the session on exit")
    add_action_args(p, ACTIONS)
    args = p.parse_args()
    check_action_args(p, args)
    recorder = c.HttpRecorder()

    async def body() -> dict[str, Any]:
        async with recorder.http_client(args) as http:
            async with streamable_http_client(
                args.url, http_client=http, terminate_on_close=not args.no_terminate
            ) as (read, write):
                out = await run_session(read, write, args)
        out["sessionId"] = recorder.session_ids[0] if recorder.session_ids else None
        return out

    c.run_main(args, recorder, body)


if __name__ == "__main__":
    main()
