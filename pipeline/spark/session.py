"""The Spark session a job runs in: the one ``spark-submit`` or a notebook gives (the active
session), or a local one started from ``--spark-master`` and ``--spark-conf``."""
from __future__ import annotations

import sys
from typing import Mapping

# Conf a session started here always gets: workers run this interpreter (so they import the same
# pairscore, torch and pyarrow), Arrow carries the batches, and no web UI port is taken.
LOCAL_DEFAULTS = {
    "spark.pyspark.python": sys.executable,
    "spark.pyspark.driver.python": sys.executable,
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
}


def spark_session(master: str | None, conf: Mapping[str, str]):
    """The active session when there is one (``spark-submit``, notebooks, tests); otherwise a new
    one on ``master`` (default ``local[*]``) with ``conf`` over :data:`LOCAL_DEFAULTS`."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder.appName("pairscore").master(master or "local[*]")
    for key, value in {**LOCAL_DEFAULTS, **conf}.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def task_slots(spark) -> int:
    """Task slots of the session (``spark.default.parallelism``): how many Python workers score at once."""
    return max(1, int(spark.sparkContext.defaultParallelism))
