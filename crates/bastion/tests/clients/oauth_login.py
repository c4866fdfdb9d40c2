"""A client that logs in by itself with the SDK's OAuth support.

Given only the MCP endpoint's URL and no credentials, the SDK's
`OAuthClientProvider` does what an interactive client does: the first
request gets 401, the `WWW-Authenticate` challenge names the protected
resource metadata (RFC 9728), which names the authorization server; the SDK
reads its metadata (RFC 8414 / OpenID discovery), registers a client
(RFC 7591), runs the authorization code flow with PKCE, asking a token for
this resource (RFC 8707), then retries with the token. Here the browser is
a plain GET of the authorization URL that does not follow the redirect:
the `code`, `state` and `iss` of its `Location` go to the callback (the
authorization server logs in a user chosen in advance).

Then: `initialize`, `tools/list`, `tools/call`.

    oauth_login.py --url URL [--token IGNORED] [--timeout 60]
        --tool NAME [--args JSON] [--redirect-uri URI]

Output (besides "ok"): protocolVersion, tools (names), text (of the call),
result (CallToolResult), statuses (HTTP statuses of the requests to the
MCP endpoint, in order), authorizationServer and resource (from the
protected resource metadata), scope (granted), clientId, tokenType.
`--token` is accepted for the common interface and ignored: no credential
is given to this client.
"""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import parse_qs, urlparse

sys.dont_write_bytecode = True

import _common as c  # noqa: E402
import httpx2  # noqa: E402
from mcp.client.auth import OAuthClientProvider, TokenStorage  # noqa: E402
from mcp.client.session import ClientSession  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402
from mcp.shared._httpx_utils import create_mcp_http_client  # noqa: E402
from mcp.shared.auth import (  # noqa: E402
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthToken,
)


class MemoryStorage(TokenStorage):
    """Tokens and the client registration, kept in memory for one run."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


class Browser:
    """Visits the authorization URL and hands the redirect's parameters back."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.result: AuthorizationCodeResult | None = None
        self.visits = 0

    async def redirect_handler(self, authorization_url: str) -> None:
        self.visits += 1
        async with httpx2.AsyncClient(follow_redirects=False, timeout=self.timeout) as h:
            response = await h.get(authorization_url)
        location = response.headers.get("location")
        if response.status_code not in (302, 303) or not location:
            raise c.ReportedError(
                f"the authorization endpoint answered {response.status_code} without a redirect",
                {"authorizationStatus": response.status_code, "authorizationBody": response.text[:500]},
            )
        params = parse_qs(urlparse(location).query)
        if "error" in params:
            raise c.ReportedError(
                f"the authorization endpoint refused: {params['error'][0]}",
                {"authorizationError": {k: v[0] for k, v in params.items()}},
            )
        code = params.get("code", [None])[0]
        if not code:
            raise c.ReportedError("no code in the redirect", {"location": location})
        self.result = AuthorizationCodeResult(
            code=code,
            state=params.get("state", [None])[0],
            iss=params.get("iss", [None])[0],
        )

    async def callback_handler(self) -> AuthorizationCodeResult:
        if self.result is None:
            raise c.ReportedError("the callback came before the redirect", {})
        result, self.result = self.result, None
        return result


def main() -> None:
    p = c.base_parser(__doc__ or "")
    p.add_argument("--tool", required=True, help="tool to call once logged in")
    p.add_argument("--args", default=None, help="JSON object of the tool's arguments")
    p.add_argument(
        "--redirect-uri",
        default="http://127.0.0.1:33418/callback",
        help="the client's registered redirect URI (never listened on: the redirect is not followed)",
    )
    args = p.parse_args()
    arguments = c.parse_json_object(p, args.args, "--args")
    recorder = c.HttpRecorder()
    statuses: list[int] = []
    endpoint_path = urlparse(args.url).path

    async def on_response(response: httpx2.Response) -> None:
        if response.request.url.path == endpoint_path:
            statuses.append(response.status_code)
        await recorder.on_response(response)

    async def body() -> dict[str, Any]:
        storage = MemoryStorage()
        browser = Browser(args.timeout)
        provider = OAuthClientProvider(
            server_url=args.url,
            client_metadata=OAuthClientMetadata(
                client_name="bastion-oauth-login-test",
                redirect_uris=[args.redirect_uri],
                grant_types=["authorization_code"],
                response_types=["code"],
            ),
            storage=storage,
            redirect_handler=browser.redirect_handler,
            callback_handler=browser.callback_handler,
        )
        # No headers of our own: no credential but what the SDK obtains.
        http = create_mcp_http_client(
            timeout=httpx2.Timeout(args.timeout, read=args.timeout),
            auth=provider,
        )
        http.event_hooks = {"request": [], "response": [on_response]}
        async with http:
            async with streamable_http_client(args.url, http_client=http) as (read, write):
                async with ClientSession(read, write, read_timeout_seconds=args.timeout, client_info=c.CLIENT_INFO) as session:
                    init = await session.initialize()
                    listed = await session.list_tools()
                    result = await session.call_tool(args.tool, arguments)
        if result.is_error:
            raise c.ReportedError("the tool call failed", {"result": c.dump(result)})
        text = "".join(getattr(item, "text", "") for item in result.content)
        ctx = provider.context
        prm = ctx.protected_resource_metadata
        return {
            "protocolVersion": init.protocol_version,
            "tools": [t.name for t in listed.tools],
            "text": text,
            "result": c.dump(result),
            "statuses": statuses,
            "authorizationServer": ctx.auth_server_url,
            "resource": str(prm.resource) if prm else None,
            "scope": storage.tokens.scope if storage.tokens else None,
            "tokenType": storage.tokens.token_type if storage.tokens else None,
            "clientId": storage.client_info.client_id if storage.client_info else None,
            "authorizationVisits": browser.visits,
        }

    c.run_main(args, recorder, body)


if __name__ == "__main__":
    main()
