"""The JSON answers of routes and the fast path: orjson bodies with X-Model-Version."""

from typing import Any

import orjson
from fastapi.responses import Response

from svdfaiss.recommender import Recommender, Results


def items_body(rec: Recommender, results: Results, **extra: Any) -> bytes:
    return orjson.dumps({"model": rec.model, "version": rec.version, "items": results.records(),
                         **extra}, option=orjson.OPT_SERIALIZE_NUMPY)


def json_response(payload: Any, version: str, status: int = 200) -> Response:
    return Response(orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY),
                    status_code=status, media_type="application/json",
                    headers={"X-Model-Version": version})


def items_response(rec: Recommender, results: Results, **extra: Any) -> Response:
    return Response(items_body(rec, results, **extra), media_type="application/json",
                    headers={"X-Model-Version": rec.version})
