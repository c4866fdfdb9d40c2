"""Many concurrent sessions, each making many concurrent tool calls.

Opens `--sessions N` clients at once (official Python SDK). Each one calls
`--tool` `--calls M` times concurrently with `--args` plus a unique string in
the `--text-field` argument (default "text"), and checks that the text content
of each result equals that unique string (after removing `--expect-prefix`). For an echo tool this proves that
responses are never delivered to the wrong request or the wrong session.

    concurrent_calls.py --url URL [--token TOKEN] [--timeout 60]
        [--era session|stateless] [--sessions 4] [--calls 8]
        [--tool echo] [--args '{}'] [--text-field text] [--expect-prefix '']

`--era session` (default): Streamable HTTP with the initialize handshake
(`--protocol-version` selects the offered version). `--era stateless`: the
2026-07-28 era, each client sending `server/discover` first.

Output: {"ok", "sessions", "callsPerSession", "total", "successes",
"failures", "mismatches", "crossSessionMismatches" (a result carrying
another session's text), "toolErrors", "allMatched", "distinctSessionIds",
"sessionFailures", "errors" (the first few), "elapsedSeconds", "timedOut"}.
Calls still pending shortly before the deadline count as failures.
Exit code 0 only when every call succeeded and matched; otherwise the same
counts are printed with "ok": false and an "error".
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from contextlib import AsyncExitStack
from typing import Any

sys.dont_write_bytecode = True

import _common as c  # noqa: E402
import anyio  # noqa: E402
import mcp_types as types  # noqa: E402
from mcp.client import Client  # noqa: E402
from mcp.client.session import ClientSession  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp_types.version import LATEST_MODERN_VERSION  # noqa: E402

MAX_ERRORS_REPORTED = 10


class Tally:
    def __init__(self) -> None:
        self.successes = 0
        self.failures = 0
        self.mismatches = 0
        self.tool_errors = 0
        self.cross_session = 0
        self.session_failures = 0
        self.errors: list[dict[str, Any]] = []

    def error(self, where: str, exc: BaseException | None = None, **extra: Any) -> None:
        if len(self.errors) < MAX_ERRORS_REPORTED:
            entry: dict[str, Any] = {"where": where, **extra}
            if exc is not None:
                entry["error"] = c.error_payload(exc)
            self.errors.append(entry)


async def one_call(call: Any, args: argparse.Namespace, label: str, tally: Tally) -> None:
    expected = f"{label}-{uuid.uuid4().hex}"
    arguments = dict(args.arguments)
    arguments[args.text_field] = expected
    try:
        result: types.CallToolResult = await call(args.tool, arguments)
    except Exception as exc:  # noqa: BLE001 - every failure is counted
        tally.failures += 1
        tally.error(label, exc)
        return
    text = c.tool_text(result)
    if args.expect_prefix and text.startswith(args.expect_prefix):
        text = text[len(args.expect_prefix) :]
    if result.is_error:
        tally.tool_errors += 1
        tally.failures += 1
        tally.error(label, None, isError=True, text=text[:200])
    elif text != expected:
        tally.mismatches += 1
        own_session = label.split("-", 1)[0] + "-"
        if text.startswith("s") and "-c" in text and not text.startswith(own_session):
            tally.cross_session += 1
        tally.error(label, None, expected=expected, got=text[:200])
    else:
        tally.successes += 1


async def one_session(index: int, args: argparse.Namespace, recorder: c.HttpRecorder, tally: Tally) -> None:
    label = f"s{index}"
    try:
        async with AsyncExitStack() as stack:
            http = await stack.enter_async_context(recorder.http_client(args))
            if args.era == "session":
                read, write = await stack.enter_async_context(streamable_http_client(args.url, http_client=http))
                session = await stack.enter_async_context(
                    ClientSession(read, write, read_timeout_seconds=args.timeout, client_info=c.CLIENT_INFO)
                )
                await c.handshake(session, args.protocol_version)
                call = session.call_tool
            else:
                client = await stack.enter_async_context(
                    Client(
                        streamable_http_client(args.url, http_client=http),
                        mode=LATEST_MODERN_VERSION,
                        cache=None,
                        read_timeout_seconds=args.timeout,
                        client_info=c.CLIENT_INFO,
                    )
                )
                raw = await client.session.send_discover(LATEST_MODERN_VERSION)
                client.session.adopt(types.DiscoverResult.model_validate(raw))
                call = client.call_tool
            async with anyio.create_task_group() as tg:
                for j in range(args.calls):
                    tg.start_soon(one_call, call, args, f"{label}-c{j}", tally)
    except Exception as exc:  # noqa: BLE001 - a broken session is counted, the others go on
        tally.session_failures += 1
        tally.error(label, exc)


def main() -> None:
    p = c.base_parser(__doc__ or "")
    p.add_argument("--era", choices=["session", "stateless"], default="session")
    p.add_argument("--protocol-version", default=None, help="session era: version offered in initialize")
    p.add_argument("--sessions", type=int, default=4)
    p.add_argument("--calls", type=int, default=8, help="calls per session")
    p.add_argument("--tool", default="echo")
    p.add_argument("--args", default=None, help="JSON object merged into every call's arguments")
    p.add_argument("--text-field", default="text", help="argument that carries the unique text (default text)")
    p.add_argument(
        "--expect-prefix",
        default="",
        help="text the tool puts before the echoed string (e.g. 'Echo: '), stripped before comparing",
    )
    args = p.parse_args()
    if args.sessions < 1 or args.calls < 1:
        p.error("--sessions and --calls must be at least 1")
    args.arguments = c.parse_json_object(p, args.args, "--args")
    recorder = c.HttpRecorder()

    async def body() -> dict[str, Any]:
        tally = Tally()
        started = time.monotonic()
        # Stop a little before the overall deadline so the counts can still be reported.
        with anyio.move_on_after(max(args.timeout * 0.9, args.timeout - 5)) as scope:
            async with anyio.create_task_group() as tg:
                for i in range(args.sessions):
                    tg.start_soon(one_session, i, args, recorder, tally)
        if scope.cancelled_caught:
            tally.error("all", TimeoutError(f"calls still pending after {time.monotonic() - started:.1f}s"))
        total = args.sessions * args.calls
        out: dict[str, Any] = {
            "sessions": args.sessions,
            "callsPerSession": args.calls,
            "total": total,
            "successes": tally.successes,
            "failures": tally.failures + (total - tally.successes - tally.failures - tally.mismatches),
            "mismatches": tally.mismatches,
            "crossSessionMismatches": tally.cross_session,
            "toolErrors": tally.tool_errors,
            "allMatched": tally.successes == total,
            "distinctSessionIds": len(recorder.session_ids),
            "sessionFailures": tally.session_failures,
            "errors": tally.errors,
            "elapsedSeconds": round(time.monotonic() - started, 3),
            "timedOut": scope.cancelled_caught,
        }
        if not out["allMatched"]:
            raise c.ReportedError(
                f"{out['successes']}/{total} calls matched "
                f"({out['failures']} failed, {out['mismatches']} mismatched)",
                out,
            )
        return out

    c.run_main(args, recorder, body)


if __name__ == "__main__":
    main()
