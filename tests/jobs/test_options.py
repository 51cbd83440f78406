"""Flags declared once: a job's click options are its settings' fields (encoders/settings.py,
jobs/options.py), so the command line and the library take the same defaults and refuse the same
values with the same line."""
from __future__ import annotations

import dataclasses

import pytest
from click.testing import CliRunner

from encoders.distill_config import DistillConfig
from encoders.settings import Range, check_settings, declared_fields, flag_name, section, setting
from jobs import train_student
from jobs.common import job_command
from jobs.train_student import TrainStudentJob
from pipeline.settings import Run

REQUIRED = {"distill": ("d",), "dev": ("v",), "output": "o"}


def test_every_field_of_the_job_is_its_flag_with_the_fields_default():
    params = {p.name: p for p in train_student.main.params}
    fields = dict((f.name, f) for f, _ in declared_fields(TrainStudentJob))
    assert set(params) == set(fields)
    job = TrainStudentJob(**REQUIRED)
    for name, param in params.items():
        if not (param.required or param.multiple or fields[name].metadata["pairscore.flag"].parse):
            assert param.default == getattr(job, name), name
    assert max(params["lr"].opts, key=len) == "--lr" and params["lr"].default == DistillConfig().lr == 5e-4


def test_a_flag_added_to_a_concern_is_on_the_command_line_and_in_the_library():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Toy(Run, DistillConfig):
        temperature: float = setting(1.0, "Soften the teacher.", range=Range(float, 0, low_open=True))

    seen = []
    toy = job_command("toy", Toy, lambda job, argv: seen.append(job) or "done", "A toy job.")
    result = CliRunner().invoke(toy, ["--temperature", "2", "--lr", "0.1"])
    assert result.exit_code == 0 and result.output.endswith("done\n")
    assert seen[0].temperature == 2.0 and section(DistillConfig, seen[0]).lr == 0.1
    result = CliRunner().invoke(toy, ["--temperature", "0"])
    assert result.exit_code == 2 and "error: --temperature 0.0 is not allowed: give a finite number > 0" in result.output
    assert "Soften the teacher." in CliRunner().invoke(toy, ["--help"]).output


@pytest.mark.parametrize("flag,value", [("--n", "0"), ("--stage2-epochs", "-1"), ("--warmup", "1"),
                                        ("--human-label-weight", "2"), ("--seed", "-3"), ("--lr", "nan")])
def test_the_command_line_and_the_library_refuse_a_value_with_the_same_line(flag, value):
    result = CliRunner().invoke(train_student.main, ["--distill", "d", "--dev", "v", "--output", "o", "--head",
                                                     "dipair", flag, value])
    assert result.exit_code == 2
    line = result.output.strip().splitlines()[-1]
    field = flag[2:].replace("-", "_")
    kind = type(getattr(TrainStudentJob(**REQUIRED), field))
    with pytest.raises(ValueError) as refused:
        check_settings(TrainStudentJob(**REQUIRED, **{field: kind(float(value))}))
    assert line == f"error: {refused.value}"
    assert flag_name(TrainStudentJob.__dataclass_fields__[field]) == flag


def test_progress_reaches_the_trainer_as_a_callback_and_quiet_or_no_progress_draws_nothing(capsys):
    """--progress is the run's concern, not the distillation's: the job hands the library a bar
    factory (encoders/progress.py), or None."""
    from encoders.progress import open_bar

    assert "progress" not in {f.name for f in dataclasses.fields(DistillConfig)}
    assert TrainStudentJob(**REQUIRED, quiet=True).bars() is None
    assert TrainStudentJob(**REQUIRED, progress=False).bars() is None
    open_bar(None, 10, "silent", "pair").update(10)
    bar = open_bar(TrainStudentJob(**REQUIRED).bars(), 10, "stage 1", "pair")
    bar.update(10)
    bar.close()
    err = capsys.readouterr().err
    assert "stage 1" in err and "10/10" in err and "silent" not in err


@pytest.mark.parametrize("missing", ["--distill", "--dev", "--output", "--head"])
def test_a_required_flag_left_out_is_named_before_anything_runs(missing):
    given = {"--distill": "d", "--dev": "v", "--output": "o", "--head": "dipair"}
    args = [a for flag, value in given.items() if flag != missing for a in (flag, value)]
    result = CliRunner().invoke(train_student.main, args)
    assert result.exit_code == 2 and f"Missing option '{missing}'" in result.output
