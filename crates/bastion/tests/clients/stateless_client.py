"""Stateless-era MCP client (protocol 2026-07-28, Streamable HTTP without sessions).

Path taken: the official Python SDK (mcp 2.3.0) implements 2026-07-28 natively,
so this script uses it rather than a hand-written HTTP client. The SDK's
`Client` stamps every request with `MCP-Protocol-Version`, `Mcp-Method`,
`Mcp-Name` (tools/call, resources/read, prompts/get) and `Mcp-Param-*` headers,
and with the `_meta` envelope (`io.modelcontextprotocol/protocolVersion`,
`clientInfo`, `clientCapabilities`); it accepts JSON or SSE responses, and it
drives multi round-trip requests (`InputRequiredResult`: sampling/elicitation
embedded in results, retried with `inputResponses`/`requestState`).

Negotiation (`--negotiate`):
    discover  (default) send `server/discover` first and adopt its result;
              fail if the server does not speak 2026-07-28 (no fallback).
    auto      the SDK's default connect policy: discover, falling back to the
              `initialize` handshake on a legacy server ("protocolVersion" in
              the output says which era was reached).
    pin       no discover at all: the first request on the wire is the action.

    stateless_client.py --url URL [--token TOKEN] [--timeout 60]
        [--negotiate discover|auto|pin] --action ACTION [action options]

Actions and their output (besides "ok", "protocolVersion"):
    discover | initialize           supportedVersions, serverInfo, capabilities,
                                    instructions, discoverResult
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
    (call-tool and sampling-tool also report "rounds": the tools/call POSTs made)
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

sys.dont_write_bytecode = True

import _common as c  # noqa: E402
import mcp_types as types  # noqa: E402
from mcp.client import Client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp_types.version import LATEST_MODERN_VERSION  # noqa: E402
from session_client import add_action_args, check_action_args  # noqa: E402

ACTIONS = [
    "discover",
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


def client_page_fetcher(client: Client) -> c.PageFetcher:
    async def fetch(kind: str, cursor: str | None) -> Any:
        if kind == "tools":
            return await client.list_tools(cursor=cursor)
        if kind == "resources":
            return await client.list_resources(cursor=cursor)
        if kind == "prompts":
            return await client.list_prompts(cursor=cursor)
        return await client.list_resource_templates(cursor=cursor)

    return fetch


def discover_summary(client: Client) -> dict[str, Any]:
    session = client.session
    result = session.discover_result
    if result is None:  # auto negotiation fell back to initialize
        init = session.initialize_result
        return c.initialize_summary(init) if init is not None else {}
    return {
        "supportedVersions": result.supported_versions,
        "serverInfo": c.dump(client.server_info) if client.server_info is not None else None,
        "capabilities": c.dump(result.capabilities),
        "instructions": result.instructions,
        "discoverResult": c.dump(result),
    }


def main() -> None:
    p = c.base_parser(__doc__ or "")
    p.add_argument("--negotiate", choices=["discover", "auto", "pin"], default="discover")
    p.add_argument(
        "--protocol-version",
        default=LATEST_MODERN_VERSION,
        help=f"modern protocol version to use (default {LATEST_MODERN_VERSION})",
    )
    add_action_args(p, ACTIONS)
    p.set_defaults(log_level="debug")
    args = p.parse_args()
    check_action_args(p, args)
    recorder = c.HttpRecorder()

    async def body() -> dict[str, Any]:
        callbacks = c.Callbacks(args.elicit_content)
        async with recorder.http_client(args) as http:
            client = Client(
                streamable_http_client(args.url, http_client=http),
                mode="auto" if args.negotiate == "auto" else args.protocol_version,
                cache=None,
                read_timeout_seconds=args.timeout,
                sampling_callback=callbacks.sampling,
                elicitation_callback=callbacks.elicitation,
                logging_callback=callbacks.logging,
                # On 2026-07-28 log delivery is a per-request opt-in carried in `_meta`.
                log_level=args.log_level,
                client_info=c.CLIENT_INFO,
            )
            async with client:
                if args.negotiate == "discover":
                    raw = await client.session.send_discover(args.protocol_version)
                    client.session.adopt(types.DiscoverResult.model_validate(raw))
                out: dict[str, Any] = {"protocolVersion": client.protocol_version}
                out.update(await run_action(client, args, callbacks))
        if args.action in ("call-tool", "sampling-tool"):
            out["rounds"] = sum(1 for e in recorder.exchanges if e.get("rpc", {}).get("method") == "tools/call")
        return out

    c.run_main(args, recorder, body)


async def run_action(client: Client, args: argparse.Namespace, callbacks: c.Callbacks) -> dict[str, Any]:
    if args.action in ("discover", "initialize"):
        return discover_summary(client)
    out = await c.shared_action(client, client.session, client_page_fetcher(client), args, callbacks)
    if out is None:
        raise ValueError(f"unknown action {args.action}")
    return out


if __name__ == "__main__":
    main()
