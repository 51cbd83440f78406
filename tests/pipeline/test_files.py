"""pipeline/files.py: the file layer Spark tasks use, without Beam."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import files
from pipeline.writers import write_parquet_file


def test_local_files_are_written_listed_read_and_deleted_without_beam(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_parquet_file("out/scores/part-a.parquet", pa.schema([("x", pa.int32())]),
                              [pa.table({"x": pa.array([1, 2], pa.int32())})])
    assert files.list_files("out") == ["out/scores/part-a.parquet"] and path == "out/scores/part-a.parquet"
    with files.open_input(str(tmp_path / path)) as handle:
        assert pq.read_table(handle).column("x").to_pylist() == [1, 2]
    files.delete(f"file://{tmp_path}/{path}")
    assert files.list_files("out") == [] and files.list_files("missing") == []


@pytest.mark.parametrize("path, needs", [
    ("hdfs://namenode:8020/data/pairs.parquet", "hdfs:// needs a Hadoop client: libhdfs and HADOOP_HOME"),
    ("weird://bucket/pairs.parquet", "weird:// needs a pyarrow filesystem for weird://"),
])
def test_a_scheme_without_its_client_says_what_to_install_in_one_line(path, needs):
    with pytest.raises(files.FileSystemUnavailable) as raised:
        files.resolve(path)
    message = str(raised.value)
    assert message.startswith(f"cannot open {path}: {needs}") and "\n" not in message
