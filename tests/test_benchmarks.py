"""The benchmark results the README shows are the ones on file, not typed by hand."""
import json

from benchmarks import sweep_presets
from utils import REPO_ROOT


def test_readme_sweep_table_is_generated_from_the_results_file():
    result = json.loads(sweep_presets.RESULTS.read_text())
    text = (REPO_ROOT / "README.md").read_text()
    assert sweep_presets.readme_with_table(text, result) == text, \
        "README.md's sweep table differs from benchmarks/results/sweep_presets.json: run " \
        "`.venv/bin/python benchmarks/sweep_presets.py --readme`"


def test_sweep_never_trains_the_courses_own_run():
    assert (113, 0) not in sweep_presets.PAIRS and len(set(sweep_presets.PAIRS)) >= 16
