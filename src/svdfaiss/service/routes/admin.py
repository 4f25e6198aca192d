"""POST /admin/reload: load the version CURRENT names now (bearer token)."""

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from svdfaiss.service import schemas
from svdfaiss.service.deps import AdminDep, ModelsDep

router = APIRouter()


@router.post("/admin/reload", response_model=schemas.ReloadResult, tags=["operations"],
             responses={401: {"model": schemas.Problem}, 403: {"model": schemas.Problem},
                        404: {"model": schemas.Problem},
                        409: {"model": schemas.ReloadResult,
                              "description": "the new bundle was refused; the old serves"}})
async def admin_reload(_: AdminDep, models: ModelsDep) -> Any:
    """Load the version CURRENT names now, for every served model (bearer token from
    SVDFAISS_ADMIN_TOKEN). The answer is the control's model, with every model's result
    under `models`; 409 when any was refused (those keep serving their old bundle)."""
    results = await models.reload()
    primary = results[list(models.holders).index(models.experiment.control.model)]
    answer = primary.model_copy(update={"models": results} if len(results) > 1 else {})
    if any(r.result == "refused" for r in results):
        return JSONResponse(answer.model_dump(), status_code=409)
    return answer
