"""Error answers: problem responses ({"detail": ...}) and the handlers mapping errors to them."""

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from svdfaiss.errors import InvalidInput, NoBundle, UnknownItem, UnknownUser, UnsupportedFilter

log = logging.getLogger("svdfaiss.service")


def problem(status: int, detail: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    async def unknown(_: Request, exc: Exception) -> JSONResponse:
        return problem(404, str(exc))

    async def invalid(_: Request, exc: Exception) -> JSONResponse:
        # The shape of FastAPI's own 422s (the OpenAPI schema of every route declares it),
        # for a value only the model can judge: a weight, a model name.
        return JSONResponse({"detail": [{"type": "value_error", "loc": [], "msg": str(exc)}]},
                            status_code=422)

    async def bad_request(_: Request, exc: Exception) -> JSONResponse:
        return problem(400, str(exc))

    async def unavailable(_: Request, exc: Exception) -> JSONResponse:
        return problem(503, str(exc))

    async def unprocessable(_: Request, exc: Exception) -> JSONResponse:
        # FastAPI's own handler echoes the input, and a body holding NaN or Infinity (which
        # Python's JSON parser accepts) cannot be written back as JSON: that was a 500.
        errors = exc.errors() if isinstance(exc, RequestValidationError) else []
        return JSONResponse({"detail": _json_safe(jsonable_encoder(errors))}, status_code=422)

    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "internal error")

    app.add_exception_handler(UnknownItem, unknown)
    app.add_exception_handler(UnknownUser, unknown)
    app.add_exception_handler(InvalidInput, invalid)
    app.add_exception_handler(UnsupportedFilter, bad_request)
    app.add_exception_handler(NoBundle, unavailable)
    app.add_exception_handler(RequestValidationError, unprocessable)
    app.add_exception_handler(Exception, crashed)


def _json_safe(value: Any) -> Any:
    """The value with non-finite floats written as strings ("nan", "inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value

