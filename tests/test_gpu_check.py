"""The GPU check (benchmarks/gpu_check.py): its dry run on the CPU goes end to end, and
its table reports failed steps and a blown budget instead of hiding them."""
import json
import subprocess
import sys

import pytest

from benchmarks import gpu_check
from utils import REPO_ROOT


def test_dry_run_on_the_cpu_runs_every_step_and_reports_each_in_one_table(tmp_path):
    before = sorted(p.name for p in gpu_check.RESULTS.iterdir())
    cmd = [sys.executable, "benchmarks/gpu_check.py", "--device", "cpu", "--quick",
           "--out", str(tmp_path)]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    table = done.stdout[done.stdout.index("\nstep "):]
    for step in gpu_check.STEPS:
        row = next(line for line in table.splitlines() if line.startswith(step + " "))
        assert row.split()[1] == "passed", row
    assert "within the budget" in table
    summary = json.loads((tmp_path / "gpu_check_cpu_quick.json").read_text())
    assert [s["step"] for s in summary["steps"]] == list(gpu_check.STEPS)
    assert all(s["passed"] for s in summary["steps"]) and summary["within_budget"]
    for step in gpu_check.STEPS:  # each step's figures, under the dry run's own name
        assert json.loads((tmp_path / f"{step}_cpu_quick.json").read_text())["passed"]
    paper = json.loads((tmp_path / "paper_cpu_quick.json").read_text())
    assert paper["test_acc_99_step"] <= paper["test_acc_999_step"] <= paper["steps"]
    notebooks = json.loads((tmp_path / "notebooks_cpu_quick.json").read_text())
    assert notebooks["cells"] > 0 and notebooks["pytest_exit_code"] == 0
    assert sorted(p.name for p in gpu_check.RESULTS.iterdir()) == before  # no new file


def test_a_failing_step_is_reported_and_the_others_still_run(tmp_path, monkeypatch,
                                                              capsys):
    ran = []

    def ok(ctx):
        ran.append(ctx.tag)
        return "fine", {}

    def broken(ctx):
        raise gpu_check.StepFailed("it wrote no train_speed.json")

    steps = {"train_speed": broken, "paper": ok, "train_many": ok, "notebooks": ok}
    monkeypatch.setattr(gpu_check, "STEP_FUNCTIONS", steps)
    code = gpu_check.main(["--device", "cpu", "--quick", "--out", str(tmp_path)])
    table = capsys.readouterr().out.split("\nstep ", 1)[1]
    assert code == 1 and ran == ["cpu_quick"] * 3
    assert "train_speed  FAILED" in table and "it wrote no train_speed.json" in table
    assert table.count(" passed ") == 3
    summary = json.loads((tmp_path / "gpu_check_cpu_quick.json").read_text())
    assert [s["passed"] for s in summary["steps"]] == [False, True, True, True]


def test_a_check_longer_than_its_budget_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu_check, "STEP_FUNCTIONS",
                        {name: (lambda ctx: ("fine", {})) for name in gpu_check.STEPS})
    code = gpu_check.main(["--device", "cpu", "--quick", "--out", str(tmp_path),
                           "--budget", "0"])
    assert code == 1 and "OVER the budget of 0 s" in capsys.readouterr().out


def test_cuda_is_refused_with_the_dry_run_command_when_there_is_none(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SystemExit, match="--device cpu --quick"):
        gpu_check.main(["--device", "cuda"])


def test_notebook_cells_that_fail_or_are_skipped_are_counted_per_notebook(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="solutions.01_training.ipynb" name="Cell 0" time="1.5"/>'
        '<testcase classname="solutions.01_training.ipynb" name="Cell 1" time="2.0">'
        '<failure message="AssertionError"/></testcase>'
        '<testcase classname="book.instructor_guide.ipynb" name="Cell 0" time="0.5">'
        '<skipped/></testcase></testsuite></testsuites>')
    per = gpu_check.junit_notebooks(xml, ["solutions/01_training.ipynb",
                                          "book/instructor_guide.ipynb"])
    assert per == {"solutions/01_training.ipynb": dict(cells=2, failed=1, skipped=0,
                                                       seconds=3.5),
                   "book/instructor_guide.ipynb": dict(cells=1, failed=0, skipped=1,
                                                       seconds=0.5)}
