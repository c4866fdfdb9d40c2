"""A stdio MCP upstream whose tools and prompts are read from a JSON file on
every list, for the pinning and poisoning tests: a test rewrites the file
and calls `reload`, and the server announces that its lists changed.

    catalog_server.py --catalog FILE

FILE holds {"tools": [...], "prompts": [...]}, definitions as listed. The
tool `reload` is always listed after the file's tools: it sends
notifications/tools/list_changed and notifications/prompts/list_changed.
Calling a tool of the file returns one text item `called NAME`; getting a
prompt returns one user message `prompt NAME`. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

RELOAD = {
    "name": "reload",
    "description": "Announce that the lists changed.",
    "inputSchema": {"type": "object", "properties": {}},
}


def send(msg: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def load(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return {"tools": [], "prompts": []}


def handle(path: str, method: str, params: dict[str, Any]) -> tuple[Any, Any]:
    catalog = load(path)
    if method == "initialize":
        return {
            "protocolVersion": params.get("protocolVersion", "2025-06-18"),
            "capabilities": {"tools": {"listChanged": True}, "prompts": {"listChanged": True}},
            "serverInfo": {"name": "catalog", "version": "1"},
        }, None
    if method == "ping":
        return {}, None
    if method == "tools/list":
        return {"tools": list(catalog.get("tools", [])) + [RELOAD]}, None
    if method == "prompts/list":
        return {"prompts": list(catalog.get("prompts", []))}, None
    if method == "tools/call":
        name = params.get("name")
        if name == "reload":
            for kind in ("tools", "prompts"):
                send({"jsonrpc": "2.0", "method": f"notifications/{kind}/list_changed"})
            return {"content": [{"type": "text", "text": "reloaded"}]}, None
        if any(t.get("name") == name for t in catalog.get("tools", [])):
            return {"content": [{"type": "text", "text": f"called {name}"}]}, None
        return None, {"code": -32602, "message": f"Unknown tool: {name}"}
    if method == "prompts/get":
        name = params.get("name")
        if any(p.get("name") == name for p in catalog.get("prompts", [])):
            text = {"type": "text", "text": f"prompt {name}"}
            return {"messages": [{"role": "user", "content": text}]}, None
        return None, {"code": -32602, "message": f"Unknown prompt: {name}"}
    return None, {"code": -32601, "message": f"Method not found: {method}"}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--catalog", required=True)
    args = parser.parse_args()
    for line in sys.stdin:
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if not isinstance(msg, dict) or "id" not in msg or "method" not in msg:
            continue
        result, error = handle(args.catalog, msg["method"], msg.get("params") or {})
        reply: dict[str, Any] = {"jsonrpc": "2.0", "id": msg["id"]}
        if error is not None:
            reply["error"] = error
        else:
            reply["result"] = result
        send(reply)
    return 0


if __name__ == "__main__":
    sys.exit(main())
