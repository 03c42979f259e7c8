"""OpenAI-style error bodies: every 4xx names what was wrong, and where; every 5xx a stable
`code` and a plain message. Internals (Ray actor ids, pids, class names) go only to the server
log, under the request id that the client sees in `x-request-id`."""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.exceptions import ActorUnavailableError, RayActorError
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.llm.chat_tokenizer import PromptTooLong
from core.llm.engine import DeadlineExceeded, Overloaded

from .schemas import ErrorDetail, ErrorResponse

logger = logging.getLogger("ray.serve")


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, kind: str = "invalid_request_error",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   kind: str = "invalid_request_error",
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(message=message, type=kind, param=param, code=code))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _field(loc: tuple) -> str | None:
    parts = [str(p) for p in loc if p != "body"]
    # Drop pydantic's union-branch tags ("str", "list[str]") so the field path stays readable.
    parts = [p for p in parts if not (p.startswith(("str", "list[", "int", "float")) or "[" in p)]
    return ".".join(parts) or None


MAX_BODY_BYTES = 2 << 20  # requests larger than this are refused before parsing (413)


def request_id(request: Request) -> str:
    """This request's id. Serve's proxy sets `x-request-id` on every request (the client's own,
    or a new one), answers with it and tags its logs with it; outside Serve, a new one."""
    return request.headers.get("x-request-id") or f"req-{uuid.uuid4().hex[:20]}"


def install_error_handlers(app: FastAPI) -> None:
    @app.middleware("http")
    async def _limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return error_response(413, f"request body over {MAX_BODY_BYTES} bytes", None,
                                  "body_too_large")
        if length is None and request.method in ("POST", "PUT", "PATCH"):
            body = b""
            async for chunk in request.stream():  # chunked upload: count as it arrives
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    return error_response(413, f"request body over {MAX_BODY_BYTES} bytes", None,
                                          "body_too_large")
            request._body = body  # starlette re-serves the consumed body from here
        return await call_next(request)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Still a 5xx, but a well-formed one: the caller gets a code, the log a traceback.
        rid = request_id(request)
        logger.error("request %s failed", rid, exc_info=exc)
        return error_response(500, f"internal error (request id {rid})", None, "internal_error",
                              "server_error")

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        field = _field(tuple(first.get("loc", ())))
        if first.get("type") == "json_invalid":
            return error_response(400, f"the body is not valid JSON: {first.get('msg')}", None,
                                  "invalid_json")
        problems = "; ".join(f"{_field(tuple(e.get('loc', ()))) or 'body'}: {e.get('msg')}"
                             for e in exc.errors()[:5])
        return error_response(400, problems, field, "invalid_value")

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param, exc.code, exc.kind, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), None, None,
                              "not_found_error" if exc.status_code == 404 else "invalid_request_error")


def serving_error(exc: Exception, param: str) -> Exception:
    """Refusals and failures of the model deployments as HTTP errors; anything else stays a
    server error."""
    if isinstance(exc, Overloaded):
        retry = str(int(exc.retry_after_s))
        return APIError(503, f"the model is at capacity: {_overload_reason(exc)}; retry after "
                             f"{retry} s", None, "overloaded", "server_error",
                        headers={"Retry-After": retry})
    if isinstance(exc, BackPressureError):
        return APIError(503, "the model is at capacity; retry shortly", None,
                        "overloaded", "server_error", headers={"Retry-After": "1"})
    if isinstance(exc, DeadlineExceeded):
        return APIError(504, "the request's deadline (x-request-timeout) passed before it "
                             "finished", None, "deadline_exceeded", "server_error")
    if isinstance(exc, RayActorError | ActorUnavailableError):
        return APIError(503, "the model replica failed while serving this request; Serve is "
                             "restoring it: retry shortly", None, "replica_failed",
                        "server_error", headers={"Retry-After": "2"})
    if isinstance(exc, PromptTooLong):
        return APIError(400, str(exc), param, "context_length_exceeded")
    return exc


def _overload_reason(exc: Overloaded) -> str:
    # The engine's own message holds only numbers it computed: safe, and useful to a client.
    return str(exc) if exc.reason in ("expected_wait", "queue_full", "tenant_queue_full") else exc.reason


def stream_error(exc: Exception, rid: str) -> dict:
    """The SSE error event for a stream that failed after its headers were sent: a stable code
    and a plain message; the details go to the log under the request id."""
    mapped = serving_error(exc, "messages")
    if isinstance(mapped, APIError):
        code, message, kind = mapped.code, mapped.message, mapped.kind
    else:
        code, message, kind = "internal_error", "generation failed on the server", "server_error"
    logger.warning("request %s: stream ended with %s", rid, code, exc_info=exc)
    return {"error": {"message": f"{message} (request id {rid})", "type": kind, "param": None,
                      "code": code}}


def model_not_found(requested: str, served: str) -> APIError:
    return APIError(404, f"model {requested!r} does not exist here; this endpoint serves "
                         f"{served!r} (see GET /v1/models)", "model", "model_not_found",
                    "not_found_error")
