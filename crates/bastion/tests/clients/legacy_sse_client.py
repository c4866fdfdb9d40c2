"""Legacy HTTP+SSE MCP client (the 2024-11-05 transport).

Uses the official Python SDK's `mcp.client.sse.sse_client`: a GET on `--url`
(the `/sse` endpoint) opens the event stream, the server's `endpoint` event
names the URL that client messages are POSTed to, and responses arrive on the
event stream. Then `ClientSession` runs the `initialize` handshake (the SDK's
own unless `--protocol-version` is given) and performs the action.

    legacy_sse_client.py --url URL/sse [--token TOKEN] [--timeout 60]
        [--protocol-version VERSION] --action ACTION [action options]

Actions and their output (besides "ok", "protocolVersion", "endpoint"):
    initialize                      serverInfo, capabilities, instructions
    list-tools                      tools (names), items, pages
    call-tool --tool N [--args J] [--progress]
                                    result (CallToolResult), text, logs, progress
    list-resources, read-resource --uri U, list-prompts, get-prompt --name N,
    sampling-tool --tool N [--elicit J]   as in session_client.py

"endpoint" is the message URL the server announced (its `sessionId` query
parameter, when present, is also reported as "sessionId").
"""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import parse_qs, urlparse

sys.dont_write_bytecode = True

import _common as c  # noqa: E402
from mcp.client.sse import sse_client  # noqa: E402
from session_client import ACTIONS, add_action_args, check_action_args, run_session  # noqa: E402


def main() -> None:
    p = c.base_parser(__doc__ or "")
    p.add_argument(
        "--protocol-version",
        default=None,
        help="protocol version to offer in initialize (default: the SDK's choice)",
    )
    add_action_args(p, ACTIONS)
    args = p.parse_args()
    check_action_args(p, args)
    recorder = c.HttpRecorder()

    async def body() -> dict[str, Any]:
        session_ids: list[str] = []
        async with sse_client(
            args.url,
            headers=c.request_headers(args),
            timeout=args.timeout,
            sse_read_timeout=args.timeout,
            httpx_client_factory=recorder.factory(args),
            on_session_created=session_ids.append,
        ) as (read, write):
            out = await run_session(read, write, args)
        posts = [e for e in recorder.exchanges if e["method"] == "POST"]
        if posts:
            out["endpoint"] = posts[0]["path"]
            query = parse_qs(urlparse(posts[0]["path"]).query)
            sid = (query.get("session_id") or query.get("sessionId") or [None])[0]
            out["sessionId"] = sid
        elif session_ids:
            out["sessionId"] = session_ids[0]
        return out

    c.run_main(args, recorder, body)


if __name__ == "__main__":
    main()
