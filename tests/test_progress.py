"""Progress: a line per build stage (and per tuning trial) on stderr when it is not a
terminal, nothing with --quiet; the results on stdout either way."""

from __future__ import annotations

from .helpers import run_cli


def test_build_and_tune_report_progress_and_quiet_silences_it(tmp_path, sample):
    index_dir = tmp_path / "indexes"
    build = run_cli(["build", str(sample.events), "--index-dir", str(index_dir), "--k", "16",
                     "--weighting", "log", "--shrinkage", "30"])
    assert build.returncode == 0, build.stderr
    for stage in ("read", "factorize", "evidence", "index items", "publish"):
        assert f"{stage}: " in build.stderr, build.stderr
    assert "svdfaiss build: model default" in build.stdout
    quiet = run_cli(["--quiet", "build", str(sample.events), "--index-dir", str(index_dir),
                     "--k", "16", "--weighting", "log", "--shrinkage", "30"])
    assert quiet.returncode == 0 and "factorize: " not in quiet.stderr
    assert "svdfaiss build: model default" in quiet.stdout
    tune = run_cli(["tune", str(sample.events), "--k", "8", "--k", "16", "--weighting", "log",
                    "--shrinkage", "30"], timeout=300)
    assert tune.returncode == 0, tune.stderr
    assert "trial 1/2: k 8, log" in tune.stderr and "trial 2/2: k 16, log" in tune.stderr
