"""`svdfaiss serve` and `svdfaiss demo`: run the HTTP service with uvicorn, the demo after
generating the sample and building it."""

from __future__ import annotations

import contextlib
import errno
import json
import shutil
import socket
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from svdfaiss.cli.main import clean_errors
from svdfaiss.cli.options import DEFAULT_INDEX_DIR, IndexDirOpt, ModelOpt
from svdfaiss.cli.printing import out, print_summary, stage_status
from svdfaiss.errors import InvalidInput, PortInUse


def check_port(host: str, port: int) -> None:
    """Raise PortInUse unless `host:port` can be bound now: checked before anything is
    printed or built, so a busy port is one clear error, not a traceback after the curl
    lines."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUse(host, port) from None
            raise InvalidInput(f"cannot listen on {host}:{port}: {exc.strerror}") from None


def _serve(settings_env: dict[str, str], host: str, port: int, workers: int) -> None:
    """Run uvicorn on the app factory; settings travel as SVDFAISS_* variables so that every
    worker process builds the same app."""
    import os

    os.environ.update(settings_env)
    if workers == 1 and os.environ.get("SVDFAISS_VERIFY_CHECKSUMS", "true").lower() not in (
            "0", "false", "no", "off"):
        # Hash the bundle while the service's modules import (about a second); the load
        # at start-up then finds the digests ready. Problems are reported by that load.
        with contextlib.suppress(Exception):
            from svdfaiss import bundle

            directory = bundle.model_dir(Path(settings_env["SVDFAISS_INDEX_DIR"]),
                                         settings_env["SVDFAISS_MODEL"])
            trust = os.environ.get("SVDFAISS_TRUST_HASH_STAMP", "true").lower() not in (
                "0", "false", "no", "off")
            bundle.prefetch_bundle(*bundle.current_bundle(directory), trust_stamp=trust)
    import uvicorn

    from svdfaiss.config import Settings

    # One request is one query: OpenMP teams per search only add threads that spin after each
    # search and starve the server (measured: p50 7.7 ms instead of sub-ms under wrk). libgomp
    # reads this when faiss first loads, which happens below, inside uvicorn.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    metrics_dir = None
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Metrics of every worker in one scrape (service/metrics.py): a fresh folder, set
        # before any worker imports prometheus-client, removed when the server stops.
        import tempfile

        metrics_dir = tempfile.mkdtemp(prefix="svdfaiss-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    settings = Settings()
    settings.resolved_experiment()  # refuse bad settings before forking workers
    try:
        if settings.drain_seconds > 0:
            if workers != 1:
                raise InvalidInput("--drain-seconds needs --workers 1 (one process a replica)")
            _serve_draining(host, port, settings.drain_seconds)
        else:
            uvicorn.run("svdfaiss.service.app:create_app", factory=True, host=host, port=port,
                        workers=workers, log_level="info", access_log=False)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def _serve_draining(host: str, port: int, seconds: float) -> None:
    """uvicorn.run for one worker, except that the first SIGTERM starts draining
    (svdfaiss.service.draining) and uvicorn's graceful shutdown follows `seconds` later;
    SIGINT or a second SIGTERM shuts down at once.

    Behind nginx (deploy/nginx/svdfaiss.conf), draining lets a rolling restart wait only for
    /readyz: nginx skips a replica that refused a connection for 1 to 2 s (fail_timeout=1s,
    counted in whole seconds), so the next replica must not refuse anything within that
    time. Connections accepted or queued when the listening socket closes are still reset
    (nginx retries those GETs elsewhere)."""
    import logging
    import signal
    import threading
    from types import FrameType

    import uvicorn

    from svdfaiss.service.draining import DRAINING

    class DrainingServer(uvicorn.Server):
        timer: threading.Timer | None = None

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if sig == signal.SIGTERM and self.timer is None and not self.should_exit:
                DRAINING.set()
                logging.getLogger("uvicorn.error").info(
                    "Draining for %.1f s before shutting down (/readyz answers 503)", seconds)
                self.timer = threading.Timer(seconds, super().handle_exit, (sig, frame))
                self.timer.daemon = True
                self.timer.start()
                return
            if self.timer is not None:
                self.timer.cancel()
            super().handle_exit(sig, frame)

    config = uvicorn.Config("svdfaiss.service.app:create_app", factory=True, host=host,
                            port=port, log_level="info", access_log=False)
    config.load_app()
    server = DrainingServer(config)
    server.run()
    if not server.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE, as uvicorn.run exits


@clean_errors
def serve(
    index_dir: IndexDirOpt = DEFAULT_INDEX_DIR,
    model: Annotated[list[str] | None, typer.Option(
        "--model", help="Model name; repeat it to serve an A/B test of several models "
        "(env SVDFAISS_MODEL for one).")] = None,
    weight: Annotated[list[float] | None, typer.Option(
        "--weight", help="Each --model's share of users, in the same order (default: "
        "equal).")] = None,
    experiment: Annotated[str, typer.Option(
        envvar="SVDFAISS_EXPERIMENT", help="The A/B experiment's name (hashed with each "
        "user id).")] = "default",
    experiment_file: Annotated[Path | None, typer.Option(
        envvar="SVDFAISS_EXPERIMENT_FILE", help="JSON {name, variants: [{name, model, "
        "weight}]}, instead of --model/--weight.")] = None,
    host: Annotated[str, typer.Option(envvar="SVDFAISS_HOST",
                                      help="Bind address; 0.0.0.0 exposes the service.")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="SVDFAISS_PORT", min=1, max=65_535)] = 8000,
    workers: Annotated[int, typer.Option(envvar="SVDFAISS_WORKERS", min=1, max=64)] = 1,
    poll_seconds: Annotated[float, typer.Option(
        envvar="SVDFAISS_POLL_SECONDS", min=0.0,
        help="Reload when CURRENT changes, checked this often (0: off).")] = 0.0,
    max_k: Annotated[int, typer.Option(envvar="SVDFAISS_MAX_K", min=1)] = 1000,
    events_log: Annotated[Path | None, typer.Option(
        envvar="SVDFAISS_EVENTS_LOG",
        help="Where POST /events appends (default: INDEX_DIR/events/MODEL.jsonl).")] = None,
    live_users: Annotated[int, typer.Option(
        envvar="SVDFAISS_LIVE_USERS", min=0,
        help="Users whose live events stay in memory (LRU); 0 turns POST /events off.")]
    = 100_000,
    catalog_log: Annotated[Path | None, typer.Option(
        envvar="SVDFAISS_CATALOG_LOG",
        help="Where the live catalog (PUT/DELETE /items, on with SVDFAISS_CATALOG_TOKEN) "
             "appends (default: INDEX_DIR/catalog/MODEL.jsonl).")] = None,
    drain_seconds: Annotated[float, typer.Option(
        envvar="SVDFAISS_DRAIN_SECONDS", min=0.0, max=300.0,
        help="On SIGTERM, keep answering this long before shutting down: /readyz answers "
             "503 and responses close their connection, so a proxy moves to the other "
             "replicas (0: off; needs --workers 1).")] = 0.0,
    live_items: Annotated[int, typer.Option(
        envvar="SVDFAISS_LIVE_ITEMS", min=1,
        help="Items the live catalog holds at most until a --catalog-updates build folds "
             "its log in (507 beyond).")] = 10_000,
) -> None:
    """Serve the model's CURRENT bundle over HTTP (admin token: SVDFAISS_ADMIN_TOKEN)."""
    import os

    from pydantic import ValidationError

    models = model or [os.environ.get("SVDFAISS_MODEL", "default")]
    env = {"SVDFAISS_INDEX_DIR": str(index_dir), "SVDFAISS_MODEL": models[0],
           "SVDFAISS_HOST": host, "SVDFAISS_PORT": str(port), "SVDFAISS_WORKERS": str(workers),
           "SVDFAISS_POLL_SECONDS": str(poll_seconds), "SVDFAISS_MAX_K": str(max_k),
           "SVDFAISS_LIVE_USERS": str(live_users), "SVDFAISS_EXPERIMENT": experiment,
           "SVDFAISS_LIVE_ITEMS": str(live_items),
           "SVDFAISS_DRAIN_SECONDS": str(drain_seconds),
           "SVDFAISS_MODELS": json.dumps(models), "SVDFAISS_WEIGHTS": json.dumps(weight or [])}
    if experiment_file is not None:
        env["SVDFAISS_EXPERIMENT_FILE"] = str(experiment_file)
    if events_log is not None:
        env["SVDFAISS_EVENTS_LOG"] = str(events_log)
    if catalog_log is not None:
        env["SVDFAISS_CATALOG_LOG"] = str(catalog_log)
    check_port(host, port)
    try:
        _serve(env, host, port, workers)
    except ValidationError as exc:
        raise InvalidInput(f"bad settings: {exc}") from None


# ---------------------------------------------------------------------------- demo


@clean_errors
def demo(
    workdir: Annotated[Path, typer.Option(help="Where the sample data goes.")] = Path("data"),
    index_dir: IndexDirOpt = DEFAULT_INDEX_DIR,
    model: ModelOpt = "default",
    serve_after: Annotated[bool, typer.Option("--serve/--no-serve",
                                              help="Start the service after building.")] = True,
    host: Annotated[str, typer.Option(help="Bind address of the service.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65_535)] = 8000,
) -> None:
    """Generate the built-in sample, build a bundle, serve it and show how to query it."""
    from svdfaiss.builder import BuildConfig
    from svdfaiss.builder import build as run_build
    from svdfaiss.recommender import Recommender
    from svdfaiss.synthetic import SampleSpec, write_sample

    if serve_after:
        check_port(host, port)
    files = write_sample(SampleSpec(), workdir / "sample")
    out.print(f"sample data: {files.events} ({files.rows:,} events), {files.catalog}")
    report = run_build(BuildConfig(input=files.events, model=model, index_dir=index_dir,
                                   catalog=files.catalog), stage_status)
    print_summary(report.path, report.manifest)
    rec = Recommender.load(index_dir, model)
    user = _first_user(rec)
    item = rec.recommend(user, 1, mode="cf").ids[0]  # an item with interactions
    base = f"{_program()} query {{}} --model {model} --index-dir {index_dir}"
    out.print("\nFrom the command line:")
    out.print(f"  {base.format('similar ' + item)} --k 5")
    out.print(f"  {base.format('recommend ' + user)} --k 5")
    if not serve_after:
        out.print(f"  {base.format('basket ' + item)} --json")
        return
    url = f"http://{host}:{port}"
    out.print(f"\nServing on {url} (API docs: {url}/docs); stop with Ctrl+C.")
    out.print(f"Open {url}/demo in a browser: search the catalog, compare similar items by "
              "cf, content and hybrid, and see a user's recommendations explained. Or try:")
    out.print(f"  curl '{url}/items/{item}/similar?k=5'")
    out.print(f"  curl '{url}/items/{item}/similar?k=5&mode=content'")
    out.print(f"  curl '{url}/users/{user}/recommendations?k=5&explain=true'")
    out.print(f"  curl -X POST {url}/recommendations -H 'content-type: application/json' "
              f"-d '{{\"item_ids\": [\"{item}\"], \"k\": 5}}'")
    out.print(f"  curl -X POST {url}/events -H 'content-type: application/json' "
              f"-d '{{\"user_id\": \"{user}\", \"item_id\": \"{item}\"}}'")
    sys.stdout.flush()
    check_port(host, port)  # again: the build took a while
    _serve({"SVDFAISS_INDEX_DIR": str(index_dir), "SVDFAISS_MODEL": model}, host, port, 1)


def _program() -> str:
    """How the user invoked us (`.venv/bin/svdfaiss` when the venv is not activated)."""
    invoked = Path(sys.argv[0])
    if invoked.name == "svdfaiss" and invoked.parent != Path(""):
        on_path = shutil.which("svdfaiss")
        if on_path is None or Path(on_path).resolve() != invoked.resolve():
            return str(invoked)
    return "svdfaiss"


def _first_user(rec: Any) -> str:
    from svdfaiss.data import decode_ids

    return decode_ids(rec.user_ids[:1])[0]
