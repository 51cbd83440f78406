"""The file-level fingerprint (encoders/file_fingerprint.py): recorded by every checkpoint writer,
computed from the files alone (standard library), and naming the file that changed."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from encoders.file_fingerprint import (RECORD_FILE, ModelChanged, checkpoint_file_fingerprint, file_entries,
                                       read_record, record_matches_sizes, verify_entries)


def test_save_student_records_both_fingerprints(tiny_checkpoint):
    from encoders.checkpoint import load_student

    record = read_record(tiny_checkpoint)
    assert record is not None
    assert record["file_fingerprint"] == checkpoint_file_fingerprint(tiny_checkpoint)
    assert record["weight_fingerprint"] == load_student(tiny_checkpoint).fingerprint
    names = [name for name, _, _ in record["files"]]
    assert "student.safetensors" in names and "config.json" in names and "encoder/model.safetensors" in names
    assert RECORD_FILE not in names
    assert record_matches_sizes(tiny_checkpoint, record)


def test_save_teacher_records_its_fingerprints(tiny_teacher_dir):
    from encoders.teacher import load_teacher

    record = read_record(tiny_teacher_dir)
    assert record["file_fingerprint"] == checkpoint_file_fingerprint(tiny_teacher_dir)
    assert record["weight_fingerprint"] == load_teacher(tiny_teacher_dir).fingerprint


def test_old_checkpoint_without_record_loads_and_is_fingerprinted_on_the_fly(tmp_path, tiny_checkpoint):
    from encoders.checkpoint import load_student

    old = shutil.copytree(tiny_checkpoint, tmp_path / "old")
    (old / RECORD_FILE).unlink()
    assert read_record(old) is None
    assert checkpoint_file_fingerprint(old) == checkpoint_file_fingerprint(tiny_checkpoint)
    assert load_student(old).fingerprint == read_record(tiny_checkpoint)["weight_fingerprint"]


def test_bookkeeping_files_do_not_count_but_model_files_do(tmp_path, tiny_checkpoint):
    copy = shutil.copytree(tiny_checkpoint, tmp_path / "copy")
    before = checkpoint_file_fingerprint(copy)
    (copy / "_SUMMARY.json").write_text("{}")          # a pairscore output's own files
    (copy / "_SUCCESS").write_text("")
    assert checkpoint_file_fingerprint(copy) == before
    config = json.loads((copy / "encoder" / "config.json").read_text())
    (copy / "encoder" / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-5}))
    assert checkpoint_file_fingerprint(copy) != before


def test_verify_names_the_changed_file(tmp_path, tiny_checkpoint):
    copy = shutil.copytree(tiny_checkpoint, tmp_path / "copy")
    entries = file_entries(copy)
    verify_entries(copy, entries, "why")               # unchanged: passes
    weights = copy / "student.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1                                      # same size, other bytes
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelChanged, match=r"student\.safetensors does not hold the same bytes.*: why"):
        verify_entries(copy, entries, "why")
    (copy / "encoder" / "extra.json").write_text("{}")
    with pytest.raises(ModelChanged, match=r"extra\.json was added"):
        verify_entries(copy, entries, "why")


def test_the_module_needs_no_heavy_import():
    code = ("import sys, encoders.file_fingerprint; "
            "print(sorted(m for m in ('torch', 'apache_beam', 'transformers', 'pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
