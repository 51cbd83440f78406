"""The Spark session a job runs in: the active one (a notebook's, a test's), the one ``spark-submit``
configured (master, executors, conf from its command line), or a local one started here from
``--spark-master`` (default ``local[*]``) and ``--spark-conf``."""
from __future__ import annotations

import os
import sys
from typing import Mapping

# Conf a local session started here gets: workers run this interpreter (so they import the same
# pairscore, torch and pyarrow), and no web UI port is taken. Not applied under spark-submit, whose
# command line says where executors find Python (spark.pyspark.python, spark.archives).
LOCAL_DEFAULTS = {
    "spark.pyspark.python": sys.executable,
    "spark.pyspark.driver.python": sys.executable,
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
}


def under_spark_submit() -> bool:
    """True when this Python process was launched by ``spark-submit`` (its JVM is already running
    and told pyspark where to connect)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def spark_session(master: str | None, conf: Mapping[str, str]):
    """The active session when there is one; under ``spark-submit`` the session its command line
    configured (``conf`` added; ``master`` must then come from spark-submit); otherwise a new local
    one on ``master`` (default ``local[*]``) with ``conf`` over :data:`LOCAL_DEFAULTS`."""
    from pyspark.sql import SparkSession

    from pipeline.errors import UsageError

    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    builder = SparkSession.builder.appName("pairscore")
    if under_spark_submit():
        if master:
            raise UsageError(f"--spark-master {master} is not allowed under spark-submit: give spark-submit --master")
        settings = dict(conf)
    else:
        builder = builder.master(master or "local[*]")
        settings = {**LOCAL_DEFAULTS, **conf}
    for key, value in settings.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def task_slots(spark) -> int:
    """Task slots of the session (``spark.default.parallelism``): how many Python workers run at once."""
    return max(1, int(spark.sparkContext.defaultParallelism))


def thread_plan(spark, explicit: int | None = None):
    """The torch threads of this session's Python workers (encoders/threads.py): ``--torch-threads``
    first; on a cluster each task slot's CPUs (``spark.task.cpus``); locally this machine's CPUs
    shared among the session's task slots (each slot is its own Python worker)."""
    from encoders.threads import ThreadPlan

    if spark.sparkContext.master.startswith("local"):
        return ThreadPlan(explicit=explicit, processes=task_slots(spark))
    return ThreadPlan(explicit=explicit, slot_cpus=int(spark.sparkContext.getConf().get("spark.task.cpus", "1")))
