"""The semi-join's pair side (pipeline/beam/used_texts.py): each id a bundle's pairs name is
marked once per bundle, whatever the number of pair batches that name it."""
from __future__ import annotations

import pyarrow as pa
import pytest

pytest.importorskip("apache_beam")

from pipeline.beam.used_texts import _IdsUsedDoFn  # noqa: E402


def marked_ids(batches: list[pa.Table], merge_at: int) -> list[str]:
    """Run the DoFn over one bundle of ``batches``: the ids it marks, in emission order."""
    dofn = _IdsUsedDoFn("left", merge_at=merge_at)
    dofn.start_bundle()
    for batch in batches:
        assert list(dofn.process(batch)) == []     # nothing leaves before the bundle ends
    out = [value.value for value in dofn.finish_bundle()]
    assert all(used is True for _, used in out)
    return [id_ for id_, _ in out]


@pytest.mark.parametrize("merge_at", [1, 3, 1 << 20])
def test_each_id_of_a_bundle_is_marked_once_however_many_batches_name_it(merge_at):
    batches = [pa.table({"left_id": ["a", "b", "a"], "right_id": ["x", "y", "z"]}),
               pa.table({"left_id": pa.array(["b", "c"], pa.large_string()), "right_id": ["x", "y"]}),
               pa.table({"left_id": ["c", "d", "a", "d"], "right_id": ["x", "y", "z", "w"]})]
    marked = marked_ids(batches, merge_at)
    assert sorted(marked) == ["a", "b", "c", "d"]


def test_a_bundle_without_pairs_marks_nothing_and_the_next_bundle_starts_empty():
    dofn = _IdsUsedDoFn("right")
    dofn.start_bundle()
    assert list(dofn.finish_bundle() or ()) == []
    dofn.start_bundle()
    list(dofn.process(pa.table({"left_id": ["a"], "right_id": ["q"]})))
    assert [v.value for v in dofn.finish_bundle()] == [("q", True)]
    dofn.start_bundle()
    assert list(dofn.finish_bundle() or ()) == []
