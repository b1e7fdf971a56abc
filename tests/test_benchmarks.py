"""The benchmark results the README shows are the ones on file, not typed by hand."""
import json

from benchmarks import soak, sweep_presets
from utils import REPO_ROOT


def test_readme_sweep_table_is_generated_from_the_results_file():
    result = json.loads(sweep_presets.RESULTS.read_text())
    text = (REPO_ROOT / "README.md").read_text()
    assert sweep_presets.readme_with_table(text, result) == text, \
        "README.md's sweep table differs from benchmarks/results/sweep_presets.json: run " \
        "`.venv/bin/python benchmarks/sweep_presets.py --readme`"


def test_sweep_never_trains_the_courses_own_run():
    assert (113, 0) not in sweep_presets.PAIRS and len(set(sweep_presets.PAIRS)) >= 16


def test_readme_soak_summary_is_generated_from_the_results_file():
    results = json.loads((soak.RESULTS / "soak.json").read_text())["results"]
    text = (REPO_ROOT / "README.md").read_text()
    assert soak.readme_with_summary(text, results) == text, \
        "README.md's soak summary differs from benchmarks/results/soak.json: run " \
        "`.venv/bin/python benchmarks/soak.py --readme`"
    assert all(r["ok"] and r["kills_after_training_resumed"] >= 20 for r in results)
