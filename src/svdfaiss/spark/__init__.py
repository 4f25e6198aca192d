"""The Spark engine of the builder (`svdfaiss build --engine spark`, extra `.[spark]`).

Reading, validation, aggregation, filters and weighting run in Spark with the native
builder's own definitions (svdfaiss.data, svdfaiss.weighting); the truncated SVD is a
randomized SVD whose passes over the matrix are distributed products (svdfaiss.spark.linalg);
the rating objective's biased MF runs the native per-row math with its user side on the
executors (svdfaiss.spark.rating); the bundle is the native one (svdfaiss.spark.build). Only
items x k factors, k x k matrices and per-item or per-user counts reach the driver; the
matrix's rows and the user vectors stream through it a block at a time.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any

from svdfaiss.errors import InvalidInput

DEFAULT_MASTER = "local[*]"


def spark_session(master: str | None = None, app: str = "svdfaiss-build",
                  conf: dict[str, str] | None = None) -> Any:
    """The active SparkSession, or a new one on `master` (local[*] by default; a session
    spark-submit started is used as it is). Python workers run this interpreter."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise InvalidInput("--engine spark needs PySpark: pip install 'svdfaiss[spark]'"
                           ) from None
    active = SparkSession.getActiveSession()
    if active is not None and master is None:
        return active
    if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
        raise InvalidInput("--engine spark needs Java 17 or later (java on PATH or JAVA_HOME)")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ  # spark-submit set the master
    builder = SparkSession.builder.appName(app)
    if master is not None or not submitted:
        builder = builder.master(master or DEFAULT_MASTER)
    builder = (builder.config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.execution.arrow.pyspark.enabled", "true")
               .config("spark.sql.shuffle.partitions", "4"))
    if not submitted and (master or DEFAULT_MASTER).startswith("local"):
        # A local run listens on the loopback interface only.
        builder = (builder.config("spark.driver.host", "127.0.0.1")
                   .config("spark.driver.bindAddress", "127.0.0.1"))
    # One BLAS/OpenMP thread per Python worker: Spark runs one worker per core already, and
    # OpenBLAS threads on top of them fight for the same cores.
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        builder = builder.config(f"spark.executorEnv.{var}", "1")
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
