"""A raw stdio MCP server that misbehaves on request, for the stdio fault
tests: answers too long for the gateway's limit, answers that are not UTF-8,
crashes, stalls, floods, and processes that will not die.

Python standard library only (no SDK): newline-delimited JSON-RPC on
stdin/stdout. A reader thread hands each request to its own worker thread,
so a slow call never holds up another; every line is written whole under
one lock to `sys.stdout.buffer`. Diagnostics go to stderr.

    fault_server.py [--ignore-eof] [--ignore-term] [--grandchild]
                    [--pid-file PATH] [--max-lifetime SECONDS]

    --ignore-eof      keep running after stdin closes (the polite stop)
    --ignore-term     ignore SIGTERM and SIGHUP
    --grandchild      start a child process that ignores SIGTERM and SIGHUP,
                      has no stdin to see closing, and lives long
    --pid-file PATH   write {"server": PID, "grandchild": PID|null, "pgid": PGID}
                      there (atomically) once started
    --max-lifetime S  exit after S seconds whatever happens (default 300; the
                      grandchild too), so nothing outlives a broken test for long

Requests answered: initialize (capabilities tools, resources, logging),
ping, tools/list, resources/list, resources/templates/list,
logging/setLevel, tools/call; notifications/initialized and
notifications/cancelled are read. Anything else gets -32601.

Tools (results are one text item):
    echo(text)                   the text
    sleep(ms)                    "slept MS ms" after MS milliseconds
    stall()                      never answers
    crash()                      exits at once (status 3), mid-call
    garbage()                    a line that is not JSON, then
                                 "wrote a non-JSON line to stdout"
    long_line(bytes, id_at)      answers its own call with one valid JSON line
                                 of about BYTES bytes (the text is "x"s);
                                 id_at "start" (default) puts the envelope
                                 first ({"jsonrpc","id","result"}), "end" puts
                                 the result first ({"result","jsonrpc","id"})
    bad_utf8()                   answers its own call with a line holding
                                 bytes that are not UTF-8 inside a string
    long_line_unknown_id(bytes)  a line of about BYTES bytes answering an id
                                 no call has, and a long notification; then
                                 "after a long line" as the real answer
    bad_utf8_notification()      a notification that is not UTF-8; then
                                 "after a bad notification"
    flood(count, method)         COUNT notifications METHOD (default
                                 notifications/message, level debug), then
                                 "flooded COUNT"
    sigmask()                    this process's blocked and ignored signal
                                 masks: {"blocked": hex, "ignored": hex}
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time

sys.dont_write_bytecode = True

OUT = sys.stdout.buffer
LOCK = threading.Lock()
UNKNOWN_ID = 987654321987

TOOLS = [
    ("echo", {"text": {"type": "string"}}),
    ("sleep", {"ms": {"type": "integer"}}),
    ("stall", {}),
    ("crash", {}),
    ("garbage", {}),
    ("long_line", {"bytes": {"type": "integer"}, "id_at": {"type": "string"}}),
    ("bad_utf8", {}),
    ("long_line_unknown_id", {"bytes": {"type": "integer"}}),
    ("bad_utf8_notification", {}),
    ("flood", {"count": {"type": "integer"}, "method": {"type": "string"}}),
    ("sigmask", {}),
]


def log(msg: str) -> None:
    print(f"fault_server[{os.getpid()}]: {msg}", file=sys.stderr, flush=True)


def write_raw(line: bytes) -> None:
    with LOCK:
        OUT.write(line + b"\n")
        OUT.flush()


def dumps(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def send(obj) -> None:
    write_raw(dumps(obj))


def text(s: str) -> dict:
    return {"content": [{"type": "text", "text": s}]}


def answer(rid, result) -> None:
    send({"jsonrpc": "2.0", "id": rid, "result": result})


def long_text(n: int) -> str:
    return "x" * max(0, n - 80)


def call_tool(rid, name: str, args: dict) -> None:
    if name == "echo":
        answer(rid, text(str(args.get("text", ""))))
    elif name == "sleep":
        ms = int(args.get("ms", 0))
        time.sleep(ms / 1000)
        answer(rid, text(f"slept {ms} ms"))
    elif name == "stall":
        log("stalling")
    elif name == "crash":
        log("crash tool called")
        os._exit(3)
    elif name == "garbage":
        write_raw(b"this is not JSON at all")
        answer(rid, text("wrote a non-JSON line to stdout"))
    elif name == "long_line":
        body = text(long_text(int(args.get("bytes", 100_000))))
        if args.get("id_at", "start") == "end":
            line = b'{"result":' + dumps(body) + b',"jsonrpc":"2.0","id":' + dumps(rid) + b"}"
        else:
            line = dumps({"jsonrpc": "2.0", "id": rid, "result": body})
        log(f"writing a {len(line)}-byte answer")
        write_raw(line)
    elif name == "bad_utf8":
        line = b'{"jsonrpc":"2.0","id":' + dumps(rid) + b',"result":{"content":[{"type":"text","text":"bad \xff\xfe bytes"}]}}'
        write_raw(line)
    elif name == "long_line_unknown_id":
        n = int(args.get("bytes", 100_000))
        send({"jsonrpc": "2.0", "id": UNKNOWN_ID, "result": text(long_text(n))})
        send({"jsonrpc": "2.0", "method": "notifications/message",
              "params": {"level": "info", "data": long_text(n)}})
        answer(rid, text("after a long line"))
    elif name == "bad_utf8_notification":
        write_raw(b'{"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"\xc3\x28"}}')
        answer(rid, text("after a bad notification"))
    elif name == "flood":
        count = int(args.get("count", 1000))
        method = str(args.get("method", "notifications/message"))
        for i in range(count):
            params = {"level": "debug", "data": f"flood {i}"} if method == "notifications/message" else {"n": i}
            send({"jsonrpc": "2.0", "method": method, "params": params})
        answer(rid, text(f"flooded {count}"))
    elif name == "sigmask":
        masks = {}
        with open("/proc/self/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("SigBlk", "SigIgn"):
                    masks["blocked" if key == "SigBlk" else "ignored"] = value.strip()
        answer(rid, text(json.dumps(masks)))
    else:
        send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32602, "message": f"unknown tool {name}"}})


def handle(msg: dict) -> None:
    method = msg.get("method")
    rid = msg.get("id")
    if rid is None:
        return  # notifications/initialized, notifications/cancelled, ...
    params = msg.get("params") or {}
    try:
        if method == "initialize":
            answer(rid, {
                "protocolVersion": params.get("protocolVersion", "2025-11-25"),
                "capabilities": {"tools": {}, "resources": {}, "logging": {}},
                "serverInfo": {"name": "fault-server", "version": "1"},
            })
        elif method in ("ping", "logging/setLevel"):
            answer(rid, {})
        elif method == "tools/list":
            answer(rid, {"tools": [
                {"name": n, "inputSchema": {"type": "object", "properties": props}} for n, props in TOOLS
            ]})
        elif method == "resources/list":
            answer(rid, {"resources": []})
        elif method == "resources/templates/list":
            answer(rid, {"resourceTemplates": []})
        elif method == "tools/call":
            call_tool(rid, str(params.get("name")), params.get("arguments") or {})
        else:
            send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": f"Method not found: {method}"}})
    except Exception as e:  # a test server: say what broke, keep serving
        log(f"error handling {method}: {e!r}")
        send({"jsonrpc": "2.0", "id": rid, "error": {"code": -32603, "message": repr(e)}})


GRANDCHILD = """
import signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
time.sleep(float(sys.argv[1]))
"""


def main() -> None:
    p = argparse.ArgumentParser(description="a misbehaving stdio MCP server")
    p.add_argument("--ignore-eof", action="store_true")
    p.add_argument("--ignore-term", action="store_true")
    p.add_argument("--grandchild", action="store_true")
    p.add_argument("--pid-file")
    p.add_argument("--max-lifetime", type=float, default=300.0)
    a = p.parse_args()

    if a.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    grandchild = None
    if a.grandchild:
        grandchild = subprocess.Popen(
            [sys.executable, "-c", GRANDCHILD, str(a.max_lifetime)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        ).pid
    if a.pid_file:
        tmp = a.pid_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"server": os.getpid(), "grandchild": grandchild, "pgid": os.getpgrp()}, f)
        os.replace(tmp, a.pid_file)
    threading.Timer(a.max_lifetime, lambda: os._exit(4)).start()
    log("started")

    workers = []
    for raw in sys.stdin.buffer:
        raw = raw.strip()
        if not raw:
            continue
        try:
            msg = json.loads(raw)
        except ValueError:
            log("a line that is not JSON")
            continue
        for m in msg if isinstance(msg, list) else [msg]:
            if isinstance(m, dict) and "method" in m:
                t = threading.Thread(target=handle, args=(m,), daemon=True)
                t.start()
                workers.append(t)
    log("stdin closed")
    if a.ignore_eof:
        while True:
            time.sleep(3600)
    # Calls in flight get a moment to answer (a stalled one never does).
    deadline = time.monotonic() + 1.0
    for t in workers:
        t.join(max(0.0, deadline - time.monotonic()))
    os._exit(0)


if __name__ == "__main__":
    main()
