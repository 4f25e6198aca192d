"""GET /experiments/{name}: the running experiment's outcomes, from the logs."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response

from svdfaiss import outcomes
from svdfaiss.service import schemas
from svdfaiss.service.deps import ModelsDep, SettingsDep
from svdfaiss.service.responses import json_response

router = APIRouter()


@router.get("/experiments/{name}", response_model=schemas.ExperimentReport,
            responses={404: {"model": schemas.Problem}}, tags=["experiments"])
async def experiment_report(models: ModelsDep, settings: SettingsDep,
                            name: Annotated[str, Path(min_length=1, max_length=64)],
                            ) -> Response:
    """Per variant: exposed users and answers, events by type, conversion rate per type
    with its 95% interval, the lift against the control with its interval, an
    always-valid interval of the difference (mixture SPRT: valid however often it is
    read), and a sample-ratio check against the weights. Read from the exposures and
    events logs, so every worker answers the same (exposures other workers buffered in
    the last SVDFAISS_EXPOSURE_FLUSH_SECONDS are not in yet)."""
    experiment = models.experiment
    if name != experiment.name:
        raise HTTPException(404, f"experiment {name!r} is not served here (serving "
                                 f"{experiment.name!r})")
    if models.exposures is not None:
        await run_in_threadpool(models.exposures.flush)
    data = await run_in_threadpool(outcomes.report, experiment.config,
                                   settings.resolved_exposures_log(),
                                   settings.resolved_events_log(), settings.event_types)
    data["exposures_logged"] = models.exposures is not None
    return json_response(data, models.primary.version or "")
