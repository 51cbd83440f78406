"""One real local PySpark session for the whole test run, or a skip saying what is missing."""
from __future__ import annotations

import shutil
import sys

import pytest


@pytest.fixture(scope="session")
def spark():
    """``local[2,2]``: two task slots, and a failed task is tried twice (so a retry can be shown).
    Spark does not run speculative copies in local mode."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        pytest.skip("pyspark is not installed: pip install -e .[spark] (and Java 17) to run the Spark tests")
    if shutil.which("java") is None:
        pytest.skip("java is not on PATH: Spark needs Java 17 (apt-get install -y openjdk-17-jre-headless)")
    from pyspark.sql import SparkSession

    from pipeline.spark.session import LOCAL_DEFAULTS

    builder = SparkSession.builder.appName("pairscore-tests").master("local[2,2]")
    for key, value in {**LOCAL_DEFAULTS, "spark.sql.shuffle.partitions": "2",
                       "spark.pyspark.python": sys.executable}.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
