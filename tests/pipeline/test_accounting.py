"""Row accounting (pipeline/accounting.py): a run reports where every row went, or fails."""
from __future__ import annotations

import pytest

from pipeline.accounting import Balance, reconcile, text_row_balance


def test_the_reconciliation_line_joins_the_shown_balances_and_lines_given_as_text():
    pairs = Balance("pairs read", 1200, (("scored", 1000), ("duplicates", 150), ("dead-lettered", 50)))
    written = Balance("rows written", 1000, (("scored", 1000),), shown=False)
    assert reconcile([pairs, written, "training examples 4 = used pairs x 2 (--swap)"]) == (
        "pairs read 1,200 = scored 1,000 + duplicates 150 + dead-lettered 50; "
        "training examples 4 = used pairs x 2 (--swap)")


@pytest.mark.parametrize("shown", [True, False])
def test_a_balance_that_does_not_hold_fails_the_run_naming_it(shown):
    """A hidden balance (rows written = scored) is checked as strictly as a shown one."""
    lost = Balance("store rows", 9, (("kept", 10),), shown=shown)
    with pytest.raises(RuntimeError, match=r"row accounting failed: store rows 9 = kept 10 \(off by -1\)"):
        reconcile([Balance("rows read", 12, (("kept", 10), ("duplicates", 2))), lost])


def test_text_rows_of_id_mode_account_for_unused_rows():
    counts = {"left_text_rows_read": 33, "left_text_rows_kept": 10, "left_text_rows_duplicate": 1,
              "left_text_rows_unused": 21, "left_text_rows_dead_lettered": 1}
    assert reconcile([text_row_balance("left", counts)]) == (
        "left text rows read 33 = kept 10 + duplicates 1 + unused 21 + dead-lettered 1")
    with pytest.raises(RuntimeError, match="left text rows read 34"):
        reconcile([text_row_balance("left", {**counts, "left_text_rows_read": 34})])
