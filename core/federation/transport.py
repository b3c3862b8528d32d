"""The hospital's HTTPS connection to its coordinator: pinned CA, signed requests, retries.

Only the federation CA from the invitation is trusted (``verify=<ca file>`` on every request, and
``trust_env`` off so REQUESTS_CA_BUNDLE or proxy variables cannot widen it). Plain HTTP and
redirects are refused. An explicit HTTPS proxy (``proxy``, core.federation.network) carries the TLS
session in a CONNECT tunnel, still verified against the pinned CA, so a TLS-inspecting proxy is refused
with a message saying what IT must exempt. Transient failures (connection errors, timeouts, 5xx, 429) are retried with
jittered exponential backoff, waiting on the job's CancelToken; a 4xx is final and raises
FederationError with the coordinator's one-line reason. Every request with a body is written to
the audit log before it is sent.
"""

from __future__ import annotations

import json
import random
import re
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.audit import AuditLog
from core.errors import ClockSkew, FederationError, NetworkError, RequestFailure
from core.federation.auth import TIMESTAMP_WINDOW_S, sign_request
from core.federation.invitation import check_https_url
from core.federation.network import check_proxy_url, shown_proxy
from core.jobs import NEVER_CANCELLED, CancelToken

RETRY_STATUSES = {429, 500, 502, 503, 504}
_TUNNEL_REFUSED = re.compile(r"Tunnel connection failed: (4\d\d)([^'\")]*)")


def _certificate_failure(exc: BaseException | None) -> str | None:
    """OpenSSL's reason when ``exc`` comes from a certificate that did not verify, else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ssl.SSLCertVerificationError):
            return str(exc.verify_message or exc)
        if isinstance(exc, requests.exceptions.SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
            return str(exc)
        reason = getattr(exc, "reason", None)  # urllib3's MaxRetryError carries the SSL error there
        exc = exc.__cause__ or exc.__context__ or (reason if isinstance(reason, BaseException) else None) or (
            exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None)
    return None


def certificate_refusal(url: str, reason: str) -> str:
    """What to tell the hospital's people when the coordinator's certificate did not verify (one line)."""
    text = reason.lower()
    if "expired" in text:
        return (f"The coordinator at {url} presents an expired certificate; its operator must renew it (or this "
                "computer's clock is wrong). Refusing to talk to it.")
    if "not yet valid" in text:
        return (f"The coordinator at {url} presents a certificate that is not valid yet: check this computer's "
                "date and time. Refusing to talk to it.")
    if "mismatch" in text:
        host = urlsplit(url).hostname
        return (f"The coordinator's certificate is not for {host}; use the address in the invitation (or ask its "
                "operator to add this name). Refusing to talk to it.")
    parts = urlsplit(url)
    where = f"{parts.hostname}:{parts.port or 443}"
    return (f"The server at {url} did not present a certificate signed by this federation's CA, which is pinned; "
            f"refusing to talk to it. Likely cause: a proxy or firewall inspecting TLS - IT must exempt {where} "
            "from TLS inspection; otherwise a wrong address or an impostor - check the invitation.")


def tunnel_refusal(url: str, proxy: str, exc: BaseException) -> str | None:
    """What to say when the proxy refused the CONNECT tunnel with a 4xx (final: retrying cannot help)."""
    match = _TUNNEL_REFUSED.search(str(exc))
    if match is None:
        return None
    parts = urlsplit(url)
    where = f"{parts.hostname}:{parts.port or 443}"
    status = f"{match.group(1)}{match.group(2)}".strip()
    if match.group(1) == "407":
        return (f"The proxy {shown_proxy(proxy)} asks for a user name and password ({status}); give them in the "
                "proxy address as http://user:password@host:port.")
    return (f"The proxy {shown_proxy(proxy)} refused to open a tunnel to the coordinator ({status}); IT must allow "
            f"HTTPS (CONNECT) from this computer to {where}.")


class CoordinatorConnection:
    def __init__(
        self,
        url: str,
        ca_file: Path,
        *,
        federation_id: str,
        hospital_id: str,
        key: Ed25519PrivateKey,
        audit: AuditLog | None = None,
        cancel: CancelToken = NEVER_CANCELLED,
        on_retry: Callable[[str], None] | None = None,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 120.0,
        max_backoff_s: float = 30.0,
        give_up_after_s: float | None = None,
        proxy: str = "",
    ) -> None:
        self.url = check_https_url(url)
        self.ca_file = str(ca_file)
        self.federation_id = federation_id
        self.hospital_id = hospital_id
        self.key = key
        self.audit = audit
        self.cancel = cancel
        self.on_retry = on_retry
        # urllib3 sends a request (an upload's body too) under the connect timeout: capped by the read timeout,
        # a link that stops taking bytes counts as dead no later than one that stops answering.
        self.timeout = (min(connect_timeout_s, read_timeout_s), read_timeout_s)
        self.max_backoff_s = max_backoff_s
        self.give_up_after_s = give_up_after_s
        self.bytes_sent = 0
        self.session = requests.Session()
        self.session.trust_env = False  # never the machine's CA bundle or proxies
        self.session.verify = self.ca_file
        self.proxy = check_proxy_url(proxy)  # only the explicit one; the CA stays pinned through its tunnel
        self.proxies = {"https": self.proxy} if self.proxy else {}
        self.session.proxies = dict(self.proxies)
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=2, max_retries=0)
        self.session.mount("https://", adapter)
        self.session.mount("http://", _RefuseHttp())

    def close(self) -> None:
        self.session.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes = b"",
        params: dict | None = None,
        what: str = "",
        round: int | None = None,
        phase: str = "",
        read_timeout_s: float | None = None,
        retry: bool = True,
        key: Ed25519PrivateKey | None = None,
        content_type: str = "application/octet-stream",
        accept_duplicate: bool = False,
        federation: str = "",
        ledger_key: str = "",
    ) -> requests.Response:
        """Send one signed request, retrying transient failures until it succeeds or is cancelled.

        A request with a body is written to the audit log first (with ``ledger_key``, the privacy-ledger
        charge that covers it, when it carries a noised release).
        """
        started = time.monotonic()
        attempt = 0
        while True:
            self.cancel.check()
            prepared = self.session.prepare_request(
                requests.Request(method, self.url + path, params=params, data=body or None,
                                 headers={"Content-Type": content_type} if body else {})
            )
            prepared.headers.update(sign_request(
                key or self.key, method=method, path=prepared.path_url, body=body, hospital_id=self.hospital_id,
                federation_id=self.federation_id))
            if body and self.audit is not None:
                self.audit.append(what=what or path, payload=body, round=round, phase=phase,
                                  destination=f"{method} {path}", federation=federation or self.federation_id,
                                  ledger_key=ledger_key)
            timeout = (self.timeout[0], read_timeout_s or self.timeout[1])
            try:
                response = self.session.send(prepared, verify=self.ca_file, timeout=timeout, allow_redirects=False,
                                             proxies=dict(self.proxies))
            except requests.exceptions.SSLError as exc:
                reason = _certificate_failure(exc)
                if reason is not None:
                    raise NetworkError(certificate_refusal(self.url, reason)) from exc
                problem = f"TLS error talking to {self.url}: {exc.__class__.__name__}"
            except requests.exceptions.ProxyError as exc:
                refusal = tunnel_refusal(self.url, self.proxy, exc)
                if refusal is not None:
                    raise NetworkError(refusal) from exc
                problem = f"cannot reach the coordinator at {self.url} through the proxy {shown_proxy(self.proxy)} " \
                          f"({exc.__class__.__name__})"
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                    requests.exceptions.ChunkedEncodingError) as exc:  # the last: the coordinator died mid-answer
                problem = f"cannot reach the coordinator at {self.url} ({exc.__class__.__name__})"
            else:
                if body:
                    self.bytes_sent += len(body)
                if 300 <= response.status_code < 400:
                    raise NetworkError(f"The coordinator answered with a redirect ({response.status_code}); refusing to follow it.")
                if response.status_code < 300:
                    return response
                detail, code = _detail(response)
                if accept_duplicate and attempt > 0 and code == "duplicate":
                    return response  # an earlier try of this very request got through
                if response.status_code == 401 and code == "clock":
                    raise ClockSkew(clock_offset(response), detail, TIMESTAMP_WINDOW_S)
                if response.status_code not in RETRY_STATUSES:
                    raise RequestFailure(response.status_code, detail, code)
                problem = f"the coordinator is busy or failing ({response.status_code}: {detail})"
            if not retry:
                raise NetworkError(f"{problem}; try again later.")
            waited = time.monotonic() - started
            if self.give_up_after_s is not None and waited > self.give_up_after_s:
                raise NetworkError(f"{problem}; gave up after {waited:.0f} s - check the network and the coordinator.")
            delay = min(self.max_backoff_s, 0.5 * 2 ** min(attempt, 10)) * random.uniform(0.5, 1.5)
            attempt += 1
            if self.on_retry is not None:
                self.on_retry(f"{problem}; retrying in {delay:.1f} s")
            self.cancel.wait(delay)

    def get_json(self, path: str, **kwargs) -> dict:
        response = self.request("GET", path, **kwargs)
        return _json(response)

    def post_json(self, path: str, data: dict, **kwargs) -> dict:
        body = json.dumps(data).encode()
        return _json(self.request("POST", path, body=body, content_type="application/json", **kwargs))


def clock_offset(response: requests.Response, now: float | None = None) -> float | None:
    """This computer's clock minus the coordinator's, from the answer's HTTP Date header (1 s resolution;
    None without one). Read as the answer arrives, so the request's round trip hardly counts."""
    from email.utils import parsedate_to_datetime

    text = response.headers.get("Date", "")
    try:
        theirs = parsedate_to_datetime(text).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return (time.time() if now is None else now) - theirs


def _json(response: requests.Response) -> dict:
    try:
        data = response.json()
    except ValueError as exc:
        raise FederationError("The coordinator sent an answer that is not JSON; is the address right?") from exc
    if not isinstance(data, dict):
        raise FederationError("The coordinator sent an unexpected answer.")
    return data


def _detail(response: requests.Response) -> tuple[str, str]:
    try:
        data = response.json()
        detail = data.get("detail", "")
        if not isinstance(detail, str):
            detail = json.dumps(detail)[:300]
        return detail, str(data.get("code", "") or "")
    except ValueError:
        return response.text[:200] or response.reason, ""


class _RefuseHttp(requests.adapters.BaseAdapter):
    """Mounted for http:// so nothing ever goes out unencrypted, even by mistake."""

    def send(self, request, **kwargs):
        raise NetworkError("Refusing plain HTTP: Dopamine only talks to its coordinator over HTTPS.")

    def close(self) -> None:
        pass
