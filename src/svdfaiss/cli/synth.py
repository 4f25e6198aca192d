"""`svdfaiss synth`: writes the generated sample (catalog and event log) to a folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from svdfaiss.cli.main import clean_errors
from svdfaiss.cli.printing import out


@clean_errors
def synth(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for events.csv and items.csv.")],
    users: Annotated[int, typer.Option(min=2)] = 5_000,
    items: Annotated[int, typer.Option(min=2)] = 2_000,
    events: Annotated[int, typer.Option(min=2)] = 100_000,
    categories: Annotated[int, typer.Option(min=1)] = 12,
    single_event_share: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.4,
    explicit: Annotated[bool, typer.Option(help="Write 1-5 ratings instead of quantities.")]
    = False,
    every_item: Annotated[bool, typer.Option(
        help="Every catalog item gets at least one event (needs --events >= --items).")]
    = False,
    seed: int = 42,
) -> None:
    """Generate a sample catalog and event log with planted structure (deterministic)."""
    from svdfaiss.synthetic import SampleSpec, write_sample

    spec = SampleSpec(users=users, items=items, events=events, categories=categories,
                      seed=seed, single_event_share=single_event_share, explicit=explicit,
                      every_item=every_item)
    files = write_sample(spec, out_dir)
    out.print(f"wrote {files.rows:,} events to {files.events} and {items:,} items to "
              f"{files.catalog}")
