"""Shared plumbing for the client scripts in this directory.

Output contract of every script: exactly one JSON object on stdout,
`{"ok": true, ...}` with exit code 0 on success, or
`{"ok": false, "error": {...}}` with a nonzero exit code on failure
(2 for bad arguments, 3 when the hard watchdog fires, 1 otherwise).
Diagnostics go to stderr. Every run is bounded by `--timeout` seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp.client.session import ClientSession
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import BaseModel

SAMPLED_TEXT = "sampled-by-client"
MAX_PAGES = 1000

_emit_lock = threading.Lock()
_emitted = False


def emit(obj: Mapping[str, Any]) -> bool:
    """Print the single result object; later calls are ignored (first writer wins)."""
    global _emitted
    with _emit_lock:
        if _emitted:
            return False
        _emitted = True
        sys.stdout.write(json.dumps(obj, default=_json_default) + "\n")
        sys.stdout.flush()
        return True


def _json_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return dump(value)
    return str(value)


def dump(model: Any) -> Any:
    """JSON-ready wire form (camelCase aliases) of an SDK model."""
    if isinstance(model, BaseModel):
        return model.model_dump(by_alias=True, mode="json", exclude_unset=True)
    return model


def log(msg: str) -> None:
    print(f"[{os.path.basename(sys.argv[0])}] {msg}", file=sys.stderr, flush=True)


class JsonArgumentParser(argparse.ArgumentParser):
    """argparse that reports usage errors as the JSON error object."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        emit({"ok": False, "error": {"type": "usage", "message": message}})
        sys.exit(2)


def base_parser(description: str) -> JsonArgumentParser:
    p = JsonArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", required=True, help="MCP endpoint URL")
    p.add_argument("--token", default=None, help="bearer token sent as 'Authorization: Bearer TOKEN'")
    p.add_argument("--timeout", type=float, default=60.0, help="overall time limit in seconds (default 60)")
    p.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="NAME:VALUE",
        help="extra HTTP header on every request (repeatable)",
    )
    p.add_argument("--http-log", action="store_true", help="include every HTTP exchange in the output as 'http'")
    p.add_argument("--verbose", action="store_true", help="SDK debug logging on stderr")
    return p


def parse_json_object(parser: argparse.ArgumentParser, value: str | None, flag: str) -> dict[str, Any]:
    if value is None:
        return {}
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        parser.error(f"{flag}: invalid JSON: {exc}")
    if not isinstance(parsed, dict):
        parser.error(f"{flag}: expected a JSON object")
    return parsed


def request_headers(args: argparse.Namespace) -> dict[str, str]:
    headers: dict[str, str] = {}
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"--header {item!r}: expected NAME:VALUE")
        headers[name.strip()] = value.strip()
    if args.token is not None:
        headers["Authorization"] = f"Bearer {args.token}"
    return headers


_LOGGED_REQUEST_HEADERS = (
    "mcp-protocol-version",
    "mcp-method",
    "mcp-name",
    "mcp-session-id",
    "last-event-id",
    "accept",
)


class HttpRecorder:
    """Records every HTTP exchange the SDK makes (via an httpx2 response hook)."""

    def __init__(self) -> None:
        self.exchanges: list[dict[str, Any]] = []
        self.session_ids: list[str] = []

    async def on_response(self, response: httpx2.Response) -> None:
        request = response.request
        entry: dict[str, Any] = {
            "method": request.method,
            "path": request.url.raw_path.decode("ascii", "replace"),
            "status": response.status_code,
            "contentType": response.headers.get("content-type"),
            "authorization": "authorization" in request.headers,
            "requestHeaders": {k: request.headers[k] for k in _LOGGED_REQUEST_HEADERS if k in request.headers},
        }
        mcp_params = {k: v for k, v in request.headers.items() if k.lower().startswith("mcp-param-")}
        if mcp_params:
            entry["requestHeaders"].update(mcp_params)
        sid = response.headers.get("mcp-session-id")
        if sid:
            entry["sessionId"] = sid
            if sid not in self.session_ids:
                self.session_ids.append(sid)
        if request.method == "POST":
            try:
                body = json.loads(request.content or b"null")
                if isinstance(body, dict):
                    entry["rpc"] = {k: body[k] for k in ("method", "id") if k in body}
                    if "method" not in body:
                        entry["rpc"]["kind"] = "error" if "error" in body else "result"
            except Exception:
                pass
        self.exchanges.append(entry)

    def http_client(self, args: argparse.Namespace) -> httpx2.AsyncClient:
        client = create_mcp_http_client(
            headers=request_headers(args),
            timeout=httpx2.Timeout(args.timeout, read=args.timeout),
        )
        client.event_hooks = {"request": [], "response": [self.on_response]}
        return client

    def factory(self, args: argparse.Namespace) -> Callable[..., httpx2.AsyncClient]:
        """An `httpx_client_factory` for the legacy SSE client that installs the hook."""

        def make(
            headers: dict[str, str] | None = None,
            timeout: httpx2.Timeout | None = None,
            auth: httpx2.Auth | None = None,
        ) -> httpx2.AsyncClient:
            client = create_mcp_http_client(headers=headers, timeout=timeout, auth=auth)
            client.event_hooks = {"request": [], "response": [self.on_response]}
            return client

        return make

    def summary(self, include_log: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        statuses = [e["status"] for e in self.exchanges]
        errors = [s for s in statuses if s >= 400]
        if errors:
            out["httpErrorStatuses"] = errors
        if include_log:
            out["http"] = self.exchanges
        return out


class ReportedError(Exception):
    """A failure whose `report` dict is merged into the JSON error object."""

    def __init__(self, message: str, report: dict[str, Any]) -> None:
        super().__init__(message)
        self.report = report


def error_payload(exc: BaseException) -> dict[str, Any]:
    leaf = _leaf_exception(exc)
    payload: dict[str, Any] = {"type": type(leaf).__name__, "message": str(leaf) or repr(leaf)}
    if isinstance(leaf, MCPError):
        payload["code"] = leaf.code
        payload["message"] = leaf.message
        if leaf.data is not None:
            payload["data"] = leaf.data
    elif isinstance(leaf, httpx2.HTTPStatusError):
        payload["httpStatus"] = leaf.response.status_code
        payload["message"] = str(leaf).splitlines()[0]
    elif isinstance(leaf, TimeoutError):
        payload["type"] = "timeout"
    return payload


def _leaf_exception(exc: BaseException) -> BaseException:
    """First meaningful leaf of (nested) exception groups, skipping cancellations."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = [_leaf_exception(e) for e in exc.exceptions]
        for leaf in leaves:
            if not isinstance(leaf, asyncio.CancelledError):
                return leaf
        return leaves[0] if leaves else exc
    return exc


_EXPECTED_ERRORS = (MCPError, TimeoutError, httpx2.HTTPStatusError, httpx2.ConnectError, ReportedError)


def run_main(
    args: argparse.Namespace,
    recorder: HttpRecorder,
    body: Callable[[], Awaitable[dict[str, Any]]],
) -> None:
    """Run `body` under the overall deadline; print the one JSON object and exit."""
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    warnings.simplefilter("ignore")
    started = time.monotonic()

    def watchdog() -> None:
        if emit(
            {
                "ok": False,
                "error": {"type": "timeout", "message": f"hard timeout after {args.timeout + 10:.0f}s (watchdog)"},
                **recorder.summary(args.http_log),
            }
        ):
            log("watchdog fired")
        os._exit(3)

    timer = threading.Timer(args.timeout + 10, watchdog)
    timer.daemon = True
    timer.start()

    async def guarded() -> dict[str, Any]:
        with anyio.fail_after(args.timeout):
            return await body()

    try:
        result = anyio.run(guarded)
    except BaseException as exc:  # noqa: BLE001 - everything becomes the JSON error
        if isinstance(exc, SystemExit):
            raise
        leaf = _leaf_exception(exc)
        if args.verbose or not isinstance(leaf, _EXPECTED_ERRORS):
            traceback.print_exception(exc, file=sys.stderr)
        else:
            log(f"error: {type(leaf).__name__}: {leaf}")
        error = error_payload(exc)
        failed = [e["status"] for e in recorder.exchanges if e["status"] >= 400]
        if failed and "httpStatus" not in error:
            error["httpStatus"] = failed[-1]
        if error["type"] == "timeout":
            error["message"] = f"timed out after {time.monotonic() - started:.1f}s (limit {args.timeout}s)"
        report = getattr(leaf, "report", None)
        emit({"ok": False, **(report if isinstance(report, dict) else {}), "error": error, **recorder.summary(args.http_log)})
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)
    emit({"ok": True, **result, **recorder.summary(args.http_log)})
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


# ---------------------------------------------------------------------------
# Client-side callbacks and actions shared by the scripts.
# ---------------------------------------------------------------------------


class Callbacks:
    """Sampling/elicitation/logging callbacks that record what the server asked for."""

    def __init__(self, elicit_content: dict[str, Any] | None, sampled_text: str = SAMPLED_TEXT) -> None:
        self.elicit_content = elicit_content
        self.sampled_text = sampled_text
        self.sampling_requests: list[Any] = []
        self.elicitation_requests: list[Any] = []
        self.logs: list[Any] = []

    async def sampling(self, context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        self.sampling_requests.append(dump(params))
        return types.CreateMessageResult(
            role="assistant",
            content=types.TextContent(type="text", text=self.sampled_text),
            model="bastion-test-client",
            stop_reason="endTurn",
        )

    async def elicitation(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.elicitation_requests.append(dump(params))
        if self.elicit_content is None:
            return types.ElicitResult(action="decline")
        return types.ElicitResult(action="accept", content=self.elicit_content)

    async def logging(self, params: types.LoggingMessageNotificationParams) -> None:
        self.logs.append(dump(params))


class ProgressLog:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        event: dict[str, Any] = {"progress": progress}
        if total is not None:
            event["total"] = total
        if message is not None:
            event["message"] = message
        self.events.append(event)


def client_capabilities() -> types.ClientCapabilities:
    """What the SDK itself advertises when sampling and elicitation callbacks are set."""
    return types.ClientCapabilities(
        sampling=types.SamplingCapability(),
        elicitation=types.ElicitationCapability(
            form=types.FormElicitationCapability(), url=types.UrlElicitationCapability()
        ),
    )


async def handshake(session: ClientSession, protocol_version: str | None) -> types.InitializeResult:
    """The initialize handshake; the SDK's own when no version is requested.

    `ClientSession.initialize()` always offers the SDK's newest handshake-era
    version, so a requested version is offered with the same request shape,
    then adopted exactly as `initialize()` would.
    """
    if protocol_version is None:
        return await session.initialize()
    result = await session.send_request(
        types.InitializeRequest(
            params=types.InitializeRequestParams(
                protocol_version=protocol_version,
                capabilities=client_capabilities(),
                client_info=CLIENT_INFO,
            )
        ),
        types.InitializeResult,
    )
    if result.protocol_version not in HANDSHAKE_PROTOCOL_VERSIONS:
        raise RuntimeError(f"server chose an unsupported protocol version: {result.protocol_version}")
    session.adopt(result)
    await session.send_notification(types.InitializedNotification())
    return result


CLIENT_INFO = types.Implementation(name="bastion-test-client", version="1.0.0")


def initialize_summary(result: types.InitializeResult) -> dict[str, Any]:
    return {
        "protocolVersion": result.protocol_version,
        "serverInfo": dump(result.server_info),
        "capabilities": dump(result.capabilities),
        "instructions": result.instructions,
    }


PageFetcher = Callable[[str, str | None], Awaitable[Any]]


async def list_all(fetch: PageFetcher, kind: str) -> dict[str, Any]:
    """Follow `nextCursor` until exhausted; `kind` is tools | resources | prompts | resourceTemplates."""
    items: list[Any] = []
    cursor: str | None = None
    pages = 0
    while True:
        page = await fetch(kind, cursor)
        pages += 1
        attr = {"tools": "tools", "resources": "resources", "prompts": "prompts"}.get(kind, "resource_templates")
        items.extend(getattr(page, attr))
        cursor = page.next_cursor
        if not cursor:
            break
        if pages >= MAX_PAGES:
            raise RuntimeError(f"{kind} pagination did not end after {MAX_PAGES} pages")
    key = "uri" if kind == "resources" else ("uriTemplate" if kind == "resourceTemplates" else "name")
    dumped = [dump(i) for i in items]
    return {kind: [d.get(key) for d in dumped], "items": dumped, "pages": pages}


def session_page_fetcher(session: ClientSession) -> PageFetcher:
    async def fetch(kind: str, cursor: str | None) -> Any:
        params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
        if kind == "tools":
            return await session.list_tools(params=params)
        if kind == "resources":
            return await session.list_resources(params=params)
        if kind == "prompts":
            return await session.list_prompts(params=params)
        return await session.list_resource_templates(params=params)

    return fetch


def skip_output_validation(session: ClientSession, tool: str) -> None:
    """Make the SDK treat `tool` as listed without an output schema.

    After a successful tools/call the SDK validates structured content against
    the tool's output schema, first sending tools/list if it has not seen the
    tool yet. This relies on SDK internals (the per-session schema cache).
    """
    session._tool_output_schemas.setdefault(tool, None)  # pyright: ignore[reportPrivateUsage]


def tool_text(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


async def shared_action(
    target: Any, session: ClientSession, fetch: PageFetcher, args: argparse.Namespace, callbacks: Callbacks
) -> dict[str, Any] | None:
    """The actions both eras perform alike, on a session-era `ClientSession`
    or a 2026-07-28 `Client` (`target`, whose methods have the same names);
    `session` is the underlying `ClientSession`. None when `args.action` is
    not one of them."""
    action = args.action
    lists = {
        "list-tools": "tools",
        "list-resources": "resources",
        "list-resource-templates": "resourceTemplates",
        "list-prompts": "prompts",
    }
    if action in lists:
        return await list_all(fetch, lists[action])
    if action == "read-resource":
        return {"result": dump(await target.read_resource(args.uri))}
    if action == "get-prompt":
        arguments = {k: v if isinstance(v, str) else json.dumps(v) for k, v in args.arguments.items()}
        return {"result": dump(await target.get_prompt(args.name, arguments))}
    if action in ("call-tool", "sampling-tool"):
        if args.no_output_validation:
            skip_output_validation(session, args.tool)
        progress = ProgressLog()
        result = await target.call_tool(args.tool, args.arguments, progress_callback=progress if args.progress else None)
        await settle(args.settle)
        out: dict[str, Any] = {"result": dump(result), "text": tool_text(result), "logs": callbacks.logs}
        if args.progress:
            out["progress"] = progress.events
        if action == "sampling-tool":
            out["samplingRequests"] = callbacks.sampling_requests
            out["elicitationRequests"] = callbacks.elicitation_requests
        return out
    return None


async def settle(seconds: float = 0.2) -> None:
    """Give notifications that raced the final response time to be delivered."""
    await anyio.sleep(seconds)
