"""What keeps the web app safe by default: same-origin only, the bearer key, strict headers.

- Same origin. A browser page from another site may not drive this server: a request whose
  `Origin` is not this server, or that the browser marks `Sec-Fetch-Site: cross-site`, gets 403.
  The JSON endpoints send no CORS headers, so other sites cannot read them either, and the run
  endpoint takes only `application/json` (a cross-site form cannot send it without a preflight).
- DNS rebinding. A server bound to loopback answers the web app only under a loopback host name,
  so a hostile domain that resolves to 127.0.0.1 cannot read the logs through the page's origin.
- The key. With `--api-key-env`, every `/api` endpoint needs `Authorization: Bearer <key>`, as
  `/v1` does. The page itself is static and holds no data; it asks for the key, keeps it in
  `sessionStorage` (this tab only, gone when the tab closes) and sends it as that header.
- Headers. The page's Content-Security-Policy allows scripts, styles and connections from this
  server only, so neither a missed escape nor a model's `<script>` can run or call out.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from fastapi import Request

from mixkit.serve.errors import APIError
from mixkit.serve.request import check_auth

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-cache",
}
DATA_HEADERS = {"cache-control": "no-store", "x-content-type-options": "nosniff"}
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    """True for loopback names and addresses (`localhost`, `127.0.0.1`, `::1`, `[::1]`)."""
    host = host.strip("[]").lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hostname(netloc: str) -> str:
    return urlsplit(f"//{netloc}").hostname or ""


def same_origin(request: Request) -> None:
    """403 unless the request comes from this server's own page (or from no page at all)."""
    bound = request.app.state.settings.host
    host = request.headers.get("host", "")
    if is_loopback(bound) and not is_loopback(_hostname(host)):
        raise APIError(
            403,
            f"this server listens on {bound} and answers the web app only as localhost/127.0.0.1 "
            f"(the request named host '{host[:100]}')",
            code="forbidden_host",
        )
    origin = request.headers.get("origin")
    if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
        raise APIError(403, "cross-origin requests are not allowed", code="cross_origin")
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise APIError(403, "cross-site requests are not allowed", code="cross_origin")


def authorized(request: Request) -> None:
    """Same origin, then the bearer key when the server has one (401 otherwise)."""
    same_origin(request)
    check_auth(request, request.app.state.settings.api_key)
