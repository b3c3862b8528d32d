"""The coordinator's HTTPS API (FastAPI) over core.federation.protocol's routes and views. Every route
but /v1/health and the OpenAPI schema is authenticated: the request is signed with the hospital's
enrolled Ed25519 key (core.federation.auth), its nonce is remembered in SQLite, and bodies have size
limits.

Routes (all JSON unless noted; the views are protocol.StateView, PublicStatus, Peers, RosterView,
RoundSummary)::

    GET  /v1/health                                 liveness, no authentication
    POST /v1/enroll                                 bind an invitation token to the signing key
    GET  /v1/plan                                   the plan and its hash
    GET  /v1/hospitals                              enrolled hospitals and their identity keys
    GET  /v1/roster                                 the frozen roster and the hospitals' signatures on it
    POST /v1/roster/signature                       this hospital's signature on the roster
    GET  /v1/state?since=ETAG&wait=SECONDS          long poll: what this hospital should do now
    GET  /v1/presence?wait=SECONDS                  held open while the hospital runs (liveness)
    GET  /v1/models/{round}.dpm                     signed global model after `round` rounds (binary)
    GET  /v1/rounds/{round}/result                  metrics and participants of a finished round
    GET  /v1/rounds/{round}/{attempt}/{step}        the coordinator's answer to a step (binary)
    POST /v1/rounds/{round}/{attempt}/{step}        a hospital's message for a step (binary)
    POST /v1/rounds/{round}/{attempt}/leave         a hospital gives up the open attempt
    POST /v1/decline                                a hospital takes part in no further rounds (its cap)
    POST /v1/leave                                  a hospital's people chose to leave the federation
    GET  /v1/status                                 federation summary
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
from contextlib import asynccontextmanager
from typing import Annotated, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from core import __version__
from core.errors import AuthFailure, Refused
from core.federation.auth import parse_signed_headers, verify_request
from core.federation.coordinator import CONTROL_BODY_LIMIT, LONG_POLL_S, Coordinator
from core.federation.protocol import Peers, PublicStatus, RosterView, RoundSummary, Route, StateView, View

log = logging.getLogger("dopamine.coordinator")

# --- the OpenAPI document: what every route takes and answers (schemathesis fuzzes the API from it) ----

BINARY = {"type": "string", "format": "binary"}
BINARY_BODY = {"requestBody": {"required": True, "content": {"application/octet-stream": {"schema": BINARY}}}}


def _json_request(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": required}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


ENROLL_BODY = _json_request({
    "token": {"type": "string", "description": "the invitation's one-time token"},
    "hospital_id": {"type": "string", "description": "the invitation's hospital id (h01, h02, ...)"},
    "public_key": {"type": "string", "description": "the hospital's Ed25519 identity key, 32 bytes, base64"},
    "num_images": {"type": "integer", "minimum": 1, "maximum": 10_000_000},
}, ["token", "hospital_id", "public_key", "num_images"])
ROSTER_SIGNATURE_BODY = _json_request({
    "digest": {"type": "string", "description": "SHA-256 (hex) of the frozen roster"},
    "signature": {"type": "string", "description": "the hospital's Ed25519 signature on it, base64"},
}, ["digest", "signature"])
REASON_BODY = _json_request({"reason": {"type": "string"}}, [])


def _json_answer(properties: dict[str, Any], description: str = "Done") -> dict[str, Any]:
    schema = {"type": "object", "properties": properties, "required": sorted(properties),
              "additionalProperties": False}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


OK = _json_answer({"ok": {"type": "boolean", "const": True}})
ERROR_SCHEMA = {"type": "object", "properties": {"detail": {"type": "string"}, "code": {"type": "string"}},
                "required": ["detail"]}
ERROR_REASONS = {
    400: "Malformed request or body", 401: "Not signed, or signed wrongly, too late or for another federation",
    403: "Not allowed for this hospital", 404: "No such round, model, step or answer",
    409: "A replayed request, or not now (the federation or round is elsewhere)", 413: "The body is too large",
}
AUTHENTICATED = (401, 409, 413)  # every signed route: no or bad signature, replayed nonce, a body too large


def _answers(ok: dict[str, Any] | type[View], *errors: int) -> dict[int | str, dict[str, Any]]:
    """The route's documented answers: ``ok`` (a view class, or a response object) and its error codes."""
    answers: dict[int | str, dict[str, Any]] = {
        200: {"model": ok, "description": ok.__doc__.splitlines()[0] if ok.__doc__ else "Done"}
        if isinstance(ok, type) else ok}
    for status in sorted(set(errors) | set(AUTHENTICATED)):
        answers[status] = {"description": ERROR_REASONS[status],
                           "content": {"application/json": {"schema": ERROR_SCHEMA}}}
    return answers


BINARY_ANSWER = {"description": "The bytes (a secure-aggregation message or a signed model package)",
                 "content": {"application/octet-stream": {"schema": BINARY}}}
MAX_ROUND_NUMBER = 2**31 - 1  # far past any plan; beyond it SQLite could not even store the number
RoundNumber = Annotated[int, Path(ge=0, le=MAX_ROUND_NUMBER, description="the round (1-based; 0: before any)")]
AttemptNumber = Annotated[int, Path(ge=0, le=MAX_ROUND_NUMBER, description="the attempt of the round (1-based)")]
StepName = Annotated[str, Path(max_length=32, description="advertise, share, mask, consistency, unmask or update")]
WaitSeconds = Annotated[float, Query(ge=0, allow_inf_nan=False,
                                     description=f"hold the answer up to this long (at most {LONG_POLL_S:g} s)")]
Since = Annotated[str, Query(max_length=128, description="the etag of the last answer: wait for a change")]
SIGNED_HEADERS = ("X-Dopamine-Hospital", "X-Dopamine-Timestamp", "X-Dopamine-Nonce", "X-Dopamine-Signature")
# Large uploads are read a few at a time: the rest wait in their sockets (uvicorn's flow control),
# so the coordinator's memory does not grow with the number of hospitals uploading at once.
MAX_CONCURRENT_UPLOADS = 4


class _Notifier:
    """Wakes every long poll when the coordinator's state changes (lives on the event loop)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def notify(self) -> None:
        self.event.set()
        self.event = asyncio.Event()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise HTTPException(413, f"Request body of {declared} bytes is larger than the limit of {limit} bytes.")
        except ValueError as exc:
            raise HTTPException(400, "Invalid Content-Length header.") from exc
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"Request body is larger than the limit of {limit} bytes.")
        chunks.append(chunk)
    return b"".join(chunks)


def _signed_path(request: Request) -> str:
    raw = request.scope.get("raw_path") or request.url.path.encode()
    query = request.scope.get("query_string") or b""
    return (raw + (b"?" + query if query else b"")).decode("latin-1")


def _json_body(body: bytes) -> dict:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nested too deep
        raise HTTPException(400, "The request body is not valid JSON.") from exc
    if not isinstance(data, dict):
        raise HTTPException(400, "The request body must be a JSON object.")
    return data


def _text(data: dict, name: str) -> str:
    """A field that must be a string (ValueError otherwise, answered with 400 by the caller)."""
    value = data[name]
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    return value


def _reason(data: dict) -> str:
    reason = data.get("reason", "")
    if not isinstance(reason, str):
        raise HTTPException(400, "The reason must be a text.")
    return reason


def create_app(coordinator: Coordinator) -> FastAPI:
    notifier: dict[str, _Notifier] = {}
    uploads = asyncio.Semaphore(MAX_CONCURRENT_UPLOADS)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        notifier["n"] = _Notifier()
        coordinator.add_listener(lambda: loop.call_soon_threadsafe(notifier["n"].notify))
        yield

    app = FastAPI(
        title="Dopamine coordinator",
        version=__version__,
        description="Federated, differentially private training with secure aggregation (Dopamine). "
        "Every request except /v1/health is signed with the hospital's Ed25519 identity key: the headers "
        f"{', '.join(SIGNED_HEADERS)} (core.federation.auth).",
        lifespan=lifespan,
    )
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused):
        return JSONResponse({"detail": str(exc), "code": exc.code}, status_code=exc.status)

    @app.exception_handler(AuthFailure)
    async def auth_failed(request: Request, exc: AuthFailure):
        # "code" lets a client act on the reason ("clock": it reads this answer's Date header to say how far off it is)
        return JSONResponse({"detail": str(exc), **({"code": exc.code} if exc.code else {})}, status_code=exc.status)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):
        log.exception("request %s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": "Internal coordinator error; the operator can see it in coordinator.log."},
                            status_code=500)

    async def authenticate(request: Request, *, limit: int = 0) -> tuple[str, bytes]:
        signed = parse_signed_headers(request.headers)
        record = coordinator.hospital(signed.hospital_id)
        if record is None:
            raise AuthFailure(401, f"Unknown hospital {signed.hospital_id!r}; enroll with an invitation first.")
        body = await read_body(request, limit)
        verify_request(Ed25519PublicKey.from_public_bytes(record.public_key), signed, method=request.method,
                       path=_signed_path(request), body=body, federation_id=coordinator.federation_id)
        fresh = await run_in_threadpool(coordinator.store.remember_nonce, signed.hospital_id, signed.nonce, signed.timestamp)
        if not fresh:
            raise AuthFailure(409, "This request was already received once (replayed nonce); it was ignored.")
        coordinator.touch(signed.hospital_id)
        return signed.hospital_id, body

    @app.get(Route.HEALTH, response_model=None, responses={200: _json_answer(
        {"status": {"type": "string", "const": "ok"}, "software_version": {"type": "string"}}, "Serving")})
    async def health() -> dict:
        return {"status": "ok", "software_version": __version__}

    @app.post(Route.ENROLL, openapi_extra=ENROLL_BODY, response_model=None, responses=_answers(_json_answer(
        {name: {"type": "string"} for name in ("hospital_id", "name", "fingerprint", "federation_id", "plan_hash")},
        "Enrolled (or already enrolled with this key)"), 400, 403))
    async def enroll(request: Request) -> dict:
        signed = parse_signed_headers(request.headers)
        body = await read_body(request, CONTROL_BODY_LIMIT)
        data = _json_body(body)
        try:
            token, hospital_id = _text(data, "token"), _text(data, "hospital_id")
            public_key = base64.b64decode(_text(data, "public_key"), validate=True)
            num_images = data["num_images"]
            key = Ed25519PublicKey.from_public_bytes(public_key)
        except (KeyError, ValueError) as exc:
            raise HTTPException(400, "Enrollment needs token, hospital_id, public_key (32-byte Ed25519, base64) "
                                     "and num_images.") from exc
        if signed.hospital_id != hospital_id:
            raise HTTPException(400, "The signed hospital id does not match the enrollment request.")
        # Proof of possession: the request is signed with the key being enrolled.
        verify_request(key, signed, method="POST", path=_signed_path(request), body=body,
                       federation_id=coordinator.federation_id)
        if not await run_in_threadpool(coordinator.store.remember_nonce, hospital_id, signed.nonce, signed.timestamp):
            raise AuthFailure(409, "This request was already received once (replayed nonce); it was ignored.")
        return await run_in_threadpool(coordinator.enroll, token=token, hospital_id=hospital_id,
                                       public_key=public_key, num_images=num_images)

    @app.get(Route.PLAN, response_model=None, responses=_answers(_json_answer(
        {"federation_id": {"type": "string"}, "plan": {"type": "object"}, "plan_hash": {"type": "string"}},
        "The federation plan and its hash"), 400))
    async def plan(request: Request) -> dict:
        await authenticate(request)
        return {"federation_id": coordinator.federation_id, "plan": coordinator.plan.to_dict(),
                "plan_hash": coordinator.plan_hash}

    @app.get(Route.HOSPITALS, response_model=None, responses=_answers(Peers, 400))
    async def hospitals(request: Request) -> dict:
        await authenticate(request)
        return Peers(coordinator.peers()).to_dict()

    @app.get(Route.ROSTER, response_model=None, responses=_answers(RosterView, 400))
    async def roster(request: Request) -> dict:
        await authenticate(request)
        return coordinator.roster_view().to_dict()

    @app.post(Route.ROSTER_SIGNATURE, openapi_extra=ROSTER_SIGNATURE_BODY, response_model=None,
              responses=_answers(OK, 400, 403))
    async def roster_signature(request: Request) -> dict:
        hospital_id, body = await authenticate(request, limit=CONTROL_BODY_LIMIT)
        data = _json_body(body)
        try:
            digest = _text(data, "digest")
            signature = base64.b64decode(_text(data, "signature"), validate=True)
        except (KeyError, ValueError) as exc:
            raise HTTPException(400, "A roster signature needs digest (hex) and signature (base64).") from exc
        await run_in_threadpool(coordinator.sign_roster, hospital_id, digest, signature)
        return {"ok": True}

    @app.get(Route.STATUS, response_model=None, responses=_answers(PublicStatus, 400))
    async def status(request: Request) -> dict:
        await authenticate(request)
        return (await run_in_threadpool(coordinator.public_status)).to_dict()

    @app.get(Route.STATE, response_model=None, responses=_answers(StateView, 400))
    async def state(request: Request, since: Since = "", wait: WaitSeconds = 0.0) -> dict:
        hospital_id, _ = await authenticate(request)
        loop = asyncio.get_running_loop()
        end = loop.time() + min(max(wait, 0.0), LONG_POLL_S)
        disconnected = False
        coordinator.poll_started(hospital_id)
        try:
            while True:
                event = notifier["n"].event
                view = coordinator.view(hospital_id)
                view = dataclasses.replace(view, etag=view.stable_etag())
                remaining = end - loop.time()
                if view.etag != since or remaining <= 0:
                    return view.to_dict()
                try:
                    await asyncio.wait_for(event.wait(), timeout=min(1.0, remaining))
                except TimeoutError:
                    pass
                if await request.is_disconnected():
                    disconnected = True
                    return view.to_dict()
        finally:
            coordinator.poll_ended(hospital_id, disconnected=disconnected)

    @app.get(Route.PRESENCE, response_model=None, responses=_answers(OK, 400))
    async def presence(request: Request, wait: WaitSeconds = 0.0) -> dict:
        """Held open by each hospital while it runs: when the connection drops, the coordinator stops
        waiting for that hospital in the current step."""
        hospital_id, _ = await authenticate(request)
        loop = asyncio.get_running_loop()
        end = loop.time() + min(max(wait, 0.0), LONG_POLL_S)
        disconnected = False
        coordinator.poll_started(hospital_id)
        try:
            while loop.time() < end:
                await asyncio.sleep(min(0.5, max(0.0, end - loop.time())))
                if await request.is_disconnected():
                    disconnected = True
                    break
            return {"ok": True}
        finally:
            coordinator.poll_ended(hospital_id, disconnected=disconnected)

    @app.get(Route.MODEL, response_model=None, responses=_answers(BINARY_ANSWER, 400, 404))
    async def model(request: Request, round: RoundNumber):
        await authenticate(request)
        return FileResponse(coordinator.model_package_path(round), media_type="application/octet-stream")

    @app.get(Route.ROUND_RESULT, response_model=None, responses=_answers(RoundSummary, 400, 404))
    async def round_result(request: Request, round: RoundNumber) -> dict:
        await authenticate(request)
        return (await run_in_threadpool(coordinator.round_result, round)).to_dict()

    @app.get(Route.STEP, response_model=None, responses=_answers(BINARY_ANSWER, 400, 404))
    async def step_answer(request: Request, round: RoundNumber, attempt: AttemptNumber, step: StepName):
        hospital_id, _ = await authenticate(request)
        body = await run_in_threadpool(coordinator.broadcast_for, hospital_id, round, attempt, step)
        return Response(body, media_type="application/octet-stream")

    @app.post(Route.LEAVE_ROUND, response_model=None, responses=_answers(OK, 400))
    async def leave_round(request: Request, round: RoundNumber, attempt: AttemptNumber) -> dict:
        hospital_id, _ = await authenticate(request, limit=CONTROL_BODY_LIMIT)
        await run_in_threadpool(coordinator.leave_round, hospital_id, round, attempt)
        return {"ok": True}

    @app.post(Route.STEP, openapi_extra=BINARY_BODY, response_model=None, responses=_answers(_json_answer(
        {"ok": {"type": "boolean", "const": True}, "bytes": {"type": "integer", "minimum": 0}}, "Received"),
        400, 403, 404))
    async def submit(request: Request, round: RoundNumber, attempt: AttemptNumber, step: StepName) -> dict:
        if step not in coordinator.steps:
            raise Refused(404, f"Unknown round step {step!r}; this federation uses {', '.join(coordinator.steps)}.")
        big = step in ("mask", "update")
        limit = coordinator.update_body_limit if big else CONTROL_BODY_LIMIT * 16
        if big:
            async with uploads:  # the body is held only until the coordinator has taken it in
                hospital_id, body = await authenticate(request, limit=limit)
                await run_in_threadpool(coordinator.submit, hospital_id, round, attempt, step, body)
        else:
            hospital_id, body = await authenticate(request, limit=limit)
            await run_in_threadpool(coordinator.submit, hospital_id, round, attempt, step, body)
        return {"ok": True, "bytes": len(body)}

    @app.post(Route.DECLINE, openapi_extra=REASON_BODY, response_model=None, responses=_answers(OK, 400))
    async def decline(request: Request) -> dict:
        hospital_id, body = await authenticate(request, limit=CONTROL_BODY_LIMIT)
        reason = _reason(_json_body(body))
        await run_in_threadpool(coordinator.decline, hospital_id, reason)
        return {"ok": True}

    @app.post(Route.LEAVE, openapi_extra=REASON_BODY, response_model=None, responses=_answers(OK, 400))
    async def leave(request: Request) -> dict:
        hospital_id, body = await authenticate(request, limit=CONTROL_BODY_LIMIT)
        reason = _reason(_json_body(body))
        await run_in_threadpool(coordinator.leave, hospital_id, reason)
        return {"ok": True}

    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, plus how requests are signed (one security scheme per header, all four needed)
    and the views' exact field sets (the hospital refuses unknown fields, so the document says so)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {})
    components["securitySchemes"] = {
        name.removeprefix("X-Dopamine-").lower(): {"type": "apiKey", "in": "header", "name": name,
                                                   "description": "core.federation.auth.sign_request"}
        for name in SIGNED_HEADERS}
    signed: list[dict[str, list[str]]] = [{name.removeprefix("X-Dopamine-").lower(): [] for name in SIGNED_HEADERS}]
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            operation["security"] = [] if path == Route.HEALTH else signed
    views = {cls.__name__ for cls in View.__subclasses__()}
    for name, definition in components.get("schemas", {}).items():
        if name in views:
            definition["additionalProperties"] = False
    app.openapi_schema = schema
    return schema
