"""Models, stores, inputs and outputs on a remote Beam filesystem.

``testfs://`` is a Beam ``FileSystem`` defined here (defining the subclass registers the scheme)
over a temporary directory, with object-store semantics like gs:// and s3:// (no directories, only
prefixes), so the code paths a cluster takes really run: listing, the model copy into the local
cache, reads and writes through ``FileSystems``. The scheme exists only in this test process, so
these runs stay on the in-process runner: a separate worker process would not know ``testfs://``.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import stat
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.io.filesystem import CompressedFile, CompressionTypes, FileMetadata, FileSystem
from apache_beam.io.filesystems import FileSystems

from encoders.checkpoint import build_student, load_student, read_config, save_student
from encoders import remote as remote_module
from encoders.remote import CACHE_ENV, cache_root, local_model_dir, pin_model_dir
from encoders.teacher import load_teacher
from jobs.label_pairs import LabelPairsJob
from jobs.label_pairs import run as label
from jobs.score_pairs import ScorePairsJob
from jobs.score_pairs import run as score

SCHEME = "testfs"


class TempDirFileSystem(FileSystem):
    """``testfs://KEY`` is the file ``ROOT/KEY``. Like an object store (gs://, s3://) it has no
    directories and lists every object under a prefix; with ``DIRS`` it lists one directory level
    at a time, subdirectories included, as hdfs:// does."""

    ROOT: str | None = None
    DIRS = False
    opened: Counter = Counter()  # testfs path -> times opened for reading

    @classmethod
    def scheme(cls):
        return SCHEME

    def _local(self, path: str) -> str:
        assert path.startswith(f"{SCHEME}://") and self.ROOT, path
        return os.path.join(self.ROOT, path[len(SCHEME) + 3:])

    def _remote(self, local: str) -> str:
        return f"{SCHEME}://" + os.path.relpath(local, self.ROOT).replace(os.sep, "/")

    def join(self, basepath, *paths):
        return "/".join([basepath.rstrip("/"), *(p.strip("/") for p in paths)])

    def split(self, path):
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def mkdirs(self, path):
        pass  # an object store has nothing to create

    def has_dirs(self):
        return self.DIRS

    def _list(self, prefix):
        if self.DIRS:
            local = self._local(prefix)
            for name in sorted(os.listdir(local)) if os.path.isdir(local) else []:
                entry = os.path.join(local, name)
                size = os.path.getsize(entry) if os.path.isfile(entry) else 0
                yield FileMetadata(self._remote(entry), size, os.path.getmtime(entry))
            return
        for directory, _, names in os.walk(self.ROOT):
            for name in names:
                local = os.path.join(directory, name)
                remote = self._remote(local)
                if remote.startswith(prefix):
                    yield FileMetadata(remote, os.path.getsize(local), os.path.getmtime(local))

    def _open(self, path, mode, compression_type):
        compression_type = FileSystem._get_compression_type(path, compression_type)
        raw = io.open(self._local(path), mode)
        return raw if compression_type == CompressionTypes.UNCOMPRESSED else CompressedFile(raw, compression_type)

    def create(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        os.makedirs(os.path.dirname(self._local(path)), exist_ok=True)
        return self._open(path, "wb", compression_type)

    def open(self, path, mime_type="application/octet-stream", compression_type=CompressionTypes.AUTO):
        self.opened[path] += 1
        return self._open(path, "rb", compression_type)

    def copy(self, sources, destinations):
        for source, destination in zip(sources, destinations):
            os.makedirs(os.path.dirname(self._local(destination)), exist_ok=True)
            shutil.copyfile(self._local(source), self._local(destination))

    def rename(self, sources, destinations):
        for source, destination in zip(sources, destinations):
            os.makedirs(os.path.dirname(self._local(destination)), exist_ok=True)
            os.replace(self._local(source), self._local(destination))

    def exists(self, path):
        return os.path.isfile(self._local(path))

    def size(self, path):
        return os.path.getsize(self._local(path))

    def last_updated(self, path):
        return os.path.getmtime(self._local(path))

    def checksum(self, path):
        return str(self.size(path))

    def metadata(self, path):
        return FileMetadata(path, self.size(path), self.last_updated(path))

    def delete(self, paths):
        for path in paths:  # an object, or every object under a prefix
            local = self._local(path)
            if os.path.isdir(local):
                shutil.rmtree(local)
            elif os.path.exists(local):
                os.remove(local)


@pytest.fixture
def testfs(tmp_path, monkeypatch):
    """The testfs:// root (a fresh temporary directory) and an empty local model cache."""
    root = tmp_path / "bucket"
    root.mkdir()
    monkeypatch.setattr(TempDirFileSystem, "ROOT", str(root))
    monkeypatch.setattr(TempDirFileSystem, "opened", Counter())
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "model-cache"))
    monkeypatch.setattr(remote_module, "_COPIES", {})  # each test is a fresh process to encoders/remote.py
    return root


def upload(local_dir: str, root, key: str) -> str:
    shutil.copytree(local_dir, root / key)
    return f"{SCHEME}://{key}"


PAIRS = [{"left": "how do i learn python", "right": "best way to learn python", "pid": 1},
         {"left": "what is a fox", "right": "a red fox", "pid": 2},
         {"left": "how do i learn python", "right": "a red fox", "pid": 3},
         {"left": "", "right": "a red fox", "pid": 4}]


# The output layout, in one place: scores of score_pairs; parts of a store or a distillation set.
SCORES = "scores/*.parquet"
PARTS = "part*.parquet"


def read_table(directory: str, pattern: str) -> pa.Table:
    """One table from the Parquet files ``pattern`` under ``directory`` (local or testfs://),
    rows sorted by their first column (``pid`` where there is one)."""
    paths = sorted(m.path for m in FileSystems.match([FileSystems.join(directory, pattern)])[0].metadata_list)
    tables = []
    for path in paths:
        with FileSystems.open(path) as handle:
            tables.append(pq.read_table(handle))
    table = pa.concat_tables(tables)
    key = "pid" if "pid" in table.column_names else table.column_names[0]
    return table.sort_by(key)


@pytest.mark.parametrize("directories", [False, True], ids=["object-store", "directories"])
def test_remote_model_is_copied_once_per_process_without_pickles(testfs, tiny_checkpoint, monkeypatch, directories):
    monkeypatch.setattr(TempDirFileSystem, "DIRS", directories)
    remote = upload(tiny_checkpoint, testfs, "models/student")
    (testfs / "models/student/encoder/pytorch_model.bin").write_bytes(b"a pickle that must never be loaded")
    (testfs / "models/student-v2").mkdir()  # a sibling whose name shares the prefix is not part of it
    (testfs / "models/student-v2/config.json").write_text("{}")

    first, again = local_model_dir(remote), local_model_dir(remote + "/")
    assert local_model_dir(remote) == first and os.path.isdir(first)
    copied = sorted(os.path.relpath(os.path.join(d, n), first) for d, _, names in os.walk(first) for n in names)
    assert "encoder/pytorch_model.bin" not in copied and not any("v2" in name for name in copied)
    assert {"config.json", "student.safetensors", "encoder/model.safetensors", "encoder/tokenizer.json"} <= set(copied)
    assert TempDirFileSystem.opened[f"{remote}/student.safetensors"] == 2  # remote and remote/: one copy each
    assert again == first  # ... and the same content lands in the same cache directory
    assert load_student(remote).fingerprint == load_student(tiny_checkpoint).fingerprint
    assert TempDirFileSystem.opened[f"{remote}/student.safetensors"] == 2  # loading reused the copy

    (testfs / "models/student/student.safetensors").write_bytes(b"changed")  # replaced on the remote store
    changed = local_model_dir(remote)
    assert changed != first and open(os.path.join(changed, "student.safetensors"), "rb").read() == b"changed"

    with pytest.raises(ValueError, match="testfs://models/none' does not exist"):
        local_model_dir(f"{SCHEME}://models/none")
    assert local_model_dir("relative/model") == "relative/model"  # local paths are left alone


def another_student_weights(checkpoint: str, target) -> bytes:
    """``student.safetensors`` of a student with the same config as ``checkpoint``, other weights."""
    save_student(build_student(read_config(checkpoint), seed=99), target)
    return (target / "student.safetensors").read_bytes()


def test_workers_load_the_pinned_model_or_stop_naming_the_changed_file(testfs, tiny_checkpoint, tmp_path,
                                                                       monkeypatch):
    remote = upload(tiny_checkpoint, testfs, "models/student")
    pinned = pin_model_dir(remote)                      # the launching process
    assert pinned == remote and load_student(pinned).fingerprint == load_student(tiny_checkpoint).fingerprint
    # The remote model is replaced while the run goes on.
    (testfs / "models/student/student.safetensors").write_bytes(another_student_weights(tiny_checkpoint,
                                                                                       tmp_path / "other"))
    shipped = pickle.loads(pickle.dumps(pinned))        # what a worker receives
    # A worker process on this machine: the launching process's copy, verified; not the new weights.
    monkeypatch.setattr(remote_module, "_COPIES", {})
    assert load_student(shipped).fingerprint == load_student(tiny_checkpoint).fingerprint
    # A worker on another machine (an empty cache) copies the pinned files and finds one changed.
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "worker-cache"))
    with pytest.raises(ValueError, match=r"model file testfs://models/student/student\.safetensors changed after "
                                         r"this run started \(pinned: \d+ bytes"):
        local_model_dir(shipped)
    assert not [n for n in os.listdir(tmp_path / "worker-cache") if not n.startswith(".")]  # nothing committed
    (testfs / "models/student/student.safetensors").unlink()
    with pytest.raises(ValueError, match=r"model file testfs://models/student/student\.safetensors cannot be read"):
        local_model_dir(shipped)
    # Without a pin (a process on its own) the model as it is now is loaded, as before.
    shutil.copy(os.path.join(tiny_checkpoint, "student.safetensors"), testfs / "models/student/student.safetensors")
    assert load_student(remote).fingerprint == load_student(tiny_checkpoint).fingerprint


@pytest.mark.parametrize("worker_cache", ["shared", "empty"])
def test_a_remote_model_replaced_during_a_run_never_mixes_two_models(testfs, tmp_path, tiny_checkpoint,
                                                                     monkeypatch, worker_cache):
    """The model is replaced on the remote store after the launching process loaded it, before the
    workers load theirs: workers that share its cache score with the pinned model (the run equals
    the local run with the original model, under its fingerprint); a worker with an empty cache
    stops the run, naming the file, and nothing is committed."""
    # score_pairs imports its runner when it runs: patching the runner module reaches it.
    from pipeline.beam import runner as job_module
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    model = upload(tiny_checkpoint, testfs, "models/student")
    replacement = another_student_weights(tiny_checkpoint, tmp_path / "other")
    make_pipeline = job_module.make_pipeline

    def replaced_then_started(beam_args):
        (testfs / "models/student/student.safetensors").write_bytes(replacement)
        if worker_cache == "empty":
            monkeypatch.setenv(CACHE_ENV, str(tmp_path / "worker-cache"))
        return make_pipeline(beam_args)

    monkeypatch.setattr(job_module, "make_pipeline", replaced_then_started)
    output = tmp_path / "remote-model"
    if worker_cache == "empty":
        with pytest.raises(Exception, match=r"student\.safetensors changed after this run started"):
            score(ScorePairsJob(max_dead_letter_fraction=1.0,
                                pairs=(str(pairs),), output=str(output), model_dir=model, keep_cols=("pid",)), [], [])
        assert not (output / "_SUCCESS").exists() and not (output / "scores").exists()
        return
    score(ScorePairsJob(max_dead_letter_fraction=1.0,
                        pairs=(str(pairs),), output=str(output), model_dir=model, keep_cols=("pid",)), [], [])
    monkeypatch.setattr(job_module, "make_pipeline", make_pipeline)
    local = tmp_path / "local"
    score(ScorePairsJob(max_dead_letter_fraction=1.0,
                        pairs=(str(pairs),), output=str(local), model_dir=tiny_checkpoint, keep_cols=("pid",)), [], [])
    np.testing.assert_array_equal(read_table(str(output), SCORES).column("score").to_numpy(),
                                  read_table(str(local), SCORES).column("score").to_numpy())
    fingerprint = load_student(tiny_checkpoint).fingerprint
    for side in ("left", "right"):
        manifest = json.loads((output / "store" / side / "_MANIFEST.json").read_text())
        assert manifest["model_fingerprint"] == fingerprint
        assert read_table(str(output / "store" / side), PARTS).equals(read_table(str(local / "store" / side), PARTS))


def test_the_model_cache_is_verified_on_every_use(testfs, tiny_checkpoint, monkeypatch):
    remote = upload(tiny_checkpoint, testfs, "models/student")
    pinned = pin_model_dir(remote)
    local = local_model_dir(remote)
    weights = os.path.join(local, "student.safetensors")
    original = open(weights, "rb").read()
    damaged = bytearray(original)
    damaged[-1] ^= 1                                   # same size, other bytes
    changes = {
        "changed": (lambda: open(weights, "wb").write(damaged), f"{weights} does not hold the bytes copied"),
        "truncated": (lambda: open(weights, "wb").write(original[:-5]), f"{weights} has {len(original) - 5} bytes"),
        "missing": (lambda: os.remove(weights), f"{weights} is missing"),
        "added": (lambda: open(os.path.join(local, "encoder", "extra.safetensors"), "wb").write(b"x"),
                  f"{os.path.join(local, 'encoder', 'extra.safetensors')} is not part of the model"),
    }
    for name, (change, problem) in changes.items():
        change()
        for process in ("the same process", "a new process", "a worker given the pin"):
            if process != "the same process":
                monkeypatch.setattr(remote_module, "_COPIES", {})
            with pytest.raises(ValueError, match=f"the cached copy of model {remote} was changed after it was made: "
                                                 f"{re.escape(problem)}"):
                local_model_dir(pinned if process == "a worker given the pin" else remote)
            with pytest.raises(ValueError, match="was changed after it was made"):
                load_student(remote)
        # Put the copy back as it was.
        open(weights, "wb").write(original)
        if name == "added":
            os.remove(os.path.join(local, "encoder", "extra.safetensors"))
    assert local_model_dir(remote) == local_model_dir(pinned) == local


def test_the_model_cache_is_per_user_by_default(testfs, tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == str(tmp_path / "xdg" / "pairscore" / "models")
    remote = upload(tiny_checkpoint, testfs, "models/student")
    assert local_model_dir(remote).startswith(cache_root() + os.sep)
    assert stat.S_IMODE(os.stat(cache_root()).st_mode) == 0o700
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == str(tmp_path / "home" / ".cache" / "pairscore" / "models")
    os.makedirs(cache_root(), mode=0o777)
    os.chmod(cache_root(), 0o777)                        # made open by an old umask: closed on first use
    monkeypatch.setattr(remote_module, "_COPIES", {})
    local_model_dir(remote)
    assert stat.S_IMODE(os.stat(cache_root()).st_mode) == 0o700


def test_score_pairs_with_everything_on_a_remote_filesystem_equals_the_local_run(testfs, tmp_path, tiny_checkpoint):
    """--pairs, --model, --store and --output all on testfs://: the scores and stores equal the local
    run's, the second run reuses the remote store, and the student is copied once in this process
    (the driver and every DoFn.setup share the copy)."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    (testfs / "in").mkdir()
    shutil.copy(pairs, testfs / "in" / "pairs.jsonl")
    model = upload(tiny_checkpoint, testfs, "models/student")

    local = tmp_path / "local"
    score(ScorePairsJob(max_dead_letter_fraction=1.0,
                        pairs=(str(pairs),), output=str(local), model_dir=tiny_checkpoint, keep_cols=("pid",)), [], [])
    first = f"{SCHEME}://runs/first"
    summary = score(ScorePairsJob(max_dead_letter_fraction=1.0,
                                  pairs=(f"{SCHEME}://in/",), output=first, model_dir=model, keep_cols=("pid",),
                                  join="shuffle"), [], [])
    assert summary.counts["pairs_scored"] == 3 and summary.counts["pairs_dead_lettered"] == 1
    assert TempDirFileSystem.opened[f"{model}/student.safetensors"] == 1

    expected = read_table(str(local), SCORES)
    got = read_table(first, SCORES)
    assert got.column("pid").to_pylist() == expected.column("pid").to_pylist() == [1, 2, 3]
    np.testing.assert_allclose(got.column("score").to_numpy(), expected.column("score").to_numpy(), rtol=1e-6)
    for side in ("left", "right"):
        assert (read_table(f"{first}/store/{side}", PARTS).equals(
            read_table(str(local / "store" / side), PARTS)))
    assert FileSystems.exists(f"{first}/_SUMMARY.json") and FileSystems.exists(f"{first}/store/left/_MANIFEST.json")

    again = score(ScorePairsJob(max_dead_letter_fraction=1.0,
                                pairs=(f"{SCHEME}://in/pairs.jsonl",), output=f"{SCHEME}://runs/second",
                                model_dir=model, store=f"{first}/store", keep_cols=("pid",)), [], [])
    assert again.counts["left_texts_encoded"] == again.counts["right_texts_encoded"] == 0
    assert again.counts["left_texts_reused"] == 2 and again.counts["right_texts_reused"] == 2
    np.testing.assert_allclose(read_table(f"{SCHEME}://runs/second", SCORES).column("score").to_numpy(),
                               expected.column("score").to_numpy(), rtol=1e-6)


def test_label_pairs_with_a_remote_teacher_and_previous_set(testfs, tmp_path, tiny_teacher_dir):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in PAIRS[:2]))
    more = tmp_path / "more.jsonl"
    more.write_text("".join(json.dumps(p) + "\n" for p in PAIRS[:3]))
    teacher = upload(tiny_teacher_dir, testfs, "models/teacher")
    assert load_teacher(teacher).fingerprint == load_teacher(tiny_teacher_dir).fingerprint

    label(LabelPairsJob(pairs=(str(pairs),), teacher=teacher, output=f"{SCHEME}://distill/day1"), [], [])
    summary = label(LabelPairsJob(pairs=(str(more),), teacher=teacher, output=f"{SCHEME}://distill/day2",
                                  previous=f"{SCHEME}://distill/day1"), [], [])
    assert summary.counts["pairs_labeled"] == 1 and summary.counts["pairs_skipped_labeled"] == 2
    local = tmp_path / "local"
    label(LabelPairsJob(pairs=(str(more),), teacher=tiny_teacher_dir, output=str(local)), [], [])
    got, expected = (read_table(d, PARTS).sort_by([("left", "ascending"), ("right", "ascending")])
                     for d in (f"{SCHEME}://distill/day2", str(local)))
    assert got.column("left").to_pylist() == expected.column("left").to_pylist()
    np.testing.assert_allclose(got.column("logit").to_numpy(), expected.column("logit").to_numpy(), rtol=1e-5)


def test_a_model_cache_other_users_can_write_is_refused(testfs, tiny_checkpoint, tmp_path, monkeypatch):
    """Models copied into a cache another user owns, or may write without the sticky bit, could be
    replaced under this user's runs: refused with one line saying what to do. A sticky shared
    directory (like /tmp) is not refused: copies in it are verified on every use."""
    remote = upload(tiny_checkpoint, testfs, "models/student")
    shared = tmp_path / "shared-cache"
    shared.mkdir()
    monkeypatch.setenv(CACHE_ENV, str(shared))
    os.chmod(shared, 0o777)
    with pytest.raises(ValueError) as refused:
        local_model_dir(remote)
    message = str(refused.value)
    assert "\n" not in message and f"model cache {shared} (${CACHE_ENV}) may be written by other users" in message
    assert "mode 777, no sticky bit" in message and not os.listdir(shared)
    if os.geteuid() == 0:       # only root can give a directory away
        os.chown(shared, 65534, 65534)
        os.chmod(shared, 0o700)
        with pytest.raises(ValueError, match=r"model cache .* belongs to (user '\w+' \()?uid 65534\)?, not to this user"):
            local_model_dir(remote)
        os.chown(shared, os.getuid(), os.getgid())
    os.chmod(shared, 0o1777)
    assert local_model_dir(remote).startswith(str(shared) + os.sep)
