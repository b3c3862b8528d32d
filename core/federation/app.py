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
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from core import __version__
from core.errors import AuthFailure, Refused
from core.federation.auth import parse_signed_headers, verify_request
from core.federation.coordinator import CONTROL_BODY_LIMIT, LONG_POLL_S, Coordinator
from core.federation.protocol import Peers, Route

log = logging.getLogger("dopamine.coordinator")

BINARY_BODY = {"requestBody": {"required": True, "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
BINARY_RESPONSE: dict[int | str, dict[str, Any]] = {200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
JSON_BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}}}
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
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPException(400, "The request body is not valid JSON.") from exc
    if not isinstance(data, dict):
        raise HTTPException(400, "The request body must be a JSON object.")
    return data


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
        "Every request except /v1/health is signed with the hospital's Ed25519 identity key.",
        lifespan=lifespan,
    )

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused):
        return JSONResponse({"detail": str(exc), "code": exc.code}, status_code=exc.status)

    @app.exception_handler(AuthFailure)
    async def auth_failed(request: Request, exc: AuthFailure):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

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

    @app.get(Route.HEALTH)
    async def health() -> dict:
        return {"status": "ok", "software_version": __version__}

    @app.post(Route.ENROLL, openapi_extra=JSON_BODY)
    async def enroll(request: Request) -> dict:
        signed = parse_signed_headers(request.headers)
        body = await read_body(request, CONTROL_BODY_LIMIT)
        data = _json_body(body)
        try:
            token = str(data["token"])
            hospital_id = str(data["hospital_id"])
            public_key = base64.b64decode(str(data["public_key"]), validate=True)
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

    @app.get(Route.PLAN)
    async def plan(request: Request) -> dict:
        await authenticate(request)
        return {"federation_id": coordinator.federation_id, "plan": coordinator.plan.to_dict(),
                "plan_hash": coordinator.plan_hash}

    @app.get(Route.HOSPITALS)
    async def hospitals(request: Request) -> dict:
        await authenticate(request)
        return Peers(coordinator.peers()).to_dict()

    @app.get(Route.ROSTER)
    async def roster(request: Request) -> dict:
        await authenticate(request)
        return coordinator.roster_view().to_dict()

    @app.post(Route.ROSTER_SIGNATURE, openapi_extra=JSON_BODY)
    async def roster_signature(request: Request) -> dict:
        hospital_id, body = await authenticate(request, limit=CONTROL_BODY_LIMIT)
        data = _json_body(body)
        try:
            digest = str(data["digest"])
            signature = base64.b64decode(str(data["signature"]), validate=True)
        except (KeyError, ValueError) as exc:
            raise HTTPException(400, "A roster signature needs digest (hex) and signature (base64).") from exc
        await run_in_threadpool(coordinator.sign_roster, hospital_id, digest, signature)
        return {"ok": True}

    @app.get(Route.STATUS)
    async def status(request: Request) -> dict:
        await authenticate(request)
        return (await run_in_threadpool(coordinator.public_status)).to_dict()

    @app.get(Route.STATE)
    async def state(request: Request, since: str = "", wait: float = 0.0) -> dict:
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

    @app.get(Route.PRESENCE)
    async def presence(request: Request, wait: float = 0.0) -> dict:
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

    @app.get(Route.MODEL, responses=BINARY_RESPONSE)
    async def model(request: Request, round: int):
        await authenticate(request)
        return FileResponse(coordinator.model_package_path(round), media_type="application/octet-stream")

    @app.get(Route.ROUND_RESULT)
    async def round_result(request: Request, round: int) -> dict:
        await authenticate(request)
        return (await run_in_threadpool(coordinator.round_result, round)).to_dict()

    @app.get(Route.STEP, responses=BINARY_RESPONSE)
    async def step_answer(request: Request, round: int, attempt: int, step: str):
        hospital_id, _ = await authenticate(request)
        body = await run_in_threadpool(coordinator.broadcast_for, hospital_id, round, attempt, step)
        return Response(body, media_type="application/octet-stream")

    @app.post(Route.LEAVE_ROUND)
    async def leave_round(request: Request, round: int, attempt: int) -> dict:
        hospital_id, _ = await authenticate(request, limit=CONTROL_BODY_LIMIT)
        await run_in_threadpool(coordinator.leave_round, hospital_id, round, attempt)
        return {"ok": True}

    @app.post(Route.STEP, openapi_extra=BINARY_BODY)
    async def submit(request: Request, round: int, attempt: int, step: str) -> dict:
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

    @app.post(Route.DECLINE, openapi_extra=JSON_BODY)
    async def decline(request: Request) -> dict:
        hospital_id, body = await authenticate(request, limit=CONTROL_BODY_LIMIT)
        reason = str(_json_body(body).get("reason", ""))
        await run_in_threadpool(coordinator.decline, hospital_id, reason)
        return {"ok": True}

    @app.post(Route.LEAVE, openapi_extra=JSON_BODY)
    async def leave(request: Request) -> dict:
        hospital_id, body = await authenticate(request, limit=CONTROL_BODY_LIMIT)
        reason = str(_json_body(body).get("reason", ""))
        await run_in_threadpool(coordinator.leave, hospital_id, reason)
        return {"ok": True}

    return app
