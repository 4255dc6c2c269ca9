"""How a sweep is summed up: mean and sample std over the finished jobs only."""

import statistics

import pytest

from rps.search.summary import stats_line, sweep_stats


def row(status, test, val):
    return {"status": status, "test_accuracy": test, "selection_val_accuracy": val}


def test_mean_and_sample_std_over_finished_jobs_only():
    table = [row("FINISHED", 1.0, 0.99), row("FINISHED", 0.922, 1.0), row("FINISHED", 1.0, 0.98),
             row("FAILED", None, None), row("KILLED", 0.2, 0.5)]  # a killed job's partial metrics don't count
    stats = sweep_stats(table)
    assert stats["n_finished"] == 3
    assert stats["mean_test_accuracy"] == pytest.approx(0.974)
    assert stats["std_test_accuracy"] == pytest.approx(statistics.stdev([1.0, 0.922, 1.0]))  # ddof=1: 0.045
    assert stats["mean_selection_val_accuracy"] == pytest.approx(0.99)
    assert stats_line(table).strip() == ("mean selection_val_accuracy 0.9900 ± 0.0100, test_accuracy 0.9740 ± 0.0450 "
                                         "(reported only; sample std) over 3 finished jobs")


def test_one_job_has_a_mean_but_no_spread_and_none_has_neither():
    one = sweep_stats([row("FINISHED", 0.9, 0.95)])
    assert one == {"n_finished": 1, "mean_test_accuracy": 0.9, "mean_selection_val_accuracy": 0.95}
    assert stats_line([row("FINISHED", 0.9, 0.95)]).strip() == \
        "mean selection_val_accuracy 0.9500, test_accuracy 0.9000 (reported only) over 1 finished job"
    assert sweep_stats([row("FAILED", None, None)]) == {"n_finished": 0}
    assert stats_line([]) == ""
