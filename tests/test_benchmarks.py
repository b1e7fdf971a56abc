"""The benchmark results the README shows are the ones on file, not typed by hand."""
import json

import pytest

from benchmarks import soak, sweep_presets, train_many, train_speed
from benchmarks.common import replace_block
from utils import REPO_ROOT
from utils.train import ROBUSTNESS_MODULI, ROBUSTNESS_SEEDS, robustness_config


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


def test_readme_train_speed_figures_are_generated_from_the_results_file():
    result = json.loads(train_speed.RESULTS.read_text())
    text = (REPO_ROOT / "README.md").read_text()
    assert train_speed.readme_with_figures(text, result) == text, \
        "README.md's train_speed figures differ from benchmarks/results/train_speed.json: run " \
        "`.venv/bin/python benchmarks/train_speed.py --readme`"


def test_readme_train_many_figures_are_generated_from_the_results_file():
    result = json.loads((train_many.RESULTS / "train_many.json").read_text())
    text = (REPO_ROOT / "README.md").read_text()
    assert train_many.readme_with_figures(text, result) == text, \
        "README.md's train_many figures differ from benchmarks/results/train_many.json: run " \
        "`.venv/bin/python benchmarks/train_many.py --readme`"


def test_readme_block_replaces_only_what_lies_between_its_markers():
    text = "before\n<!-- b -->\nold\n<!-- e -->\nafter\n"
    assert replace_block(text, "<!-- b -->", "<!-- e -->", "new") == "before\n<!-- b -->\nnew\n<!-- e -->\nafter\n"
    for broken in ("no markers", "<!-- b --><!-- b --><!-- e -->", "<!-- e --> <!-- b -->"):
        with pytest.raises(SystemExit, match="must hold the markers"):
            replace_block(broken, "<!-- b -->", "<!-- e -->", "new")


def _train_many_result(batched_ratio: float) -> dict:
    rows = [{"how": "one after another (train)", "ms_per_step": 100.0, "ratio_to_one_after_another": 1.0,
             "total_s": 10.0},
            {"how": "batched (train_many, default)", "ms_per_step": 100.0 * batched_ratio,
             "ratio_to_one_after_another": batched_ratio, "total_s": 10.0 * batched_ratio}]
    return {"machine": {"threads": 4, "torch": "x"}, "device": "cpu",
            "set": {"moduli": [97], "seeds": [0, 1], "steps": {"97": 10}, "runs": 2}, "rows": rows,
            "total_ratio": batched_ratio, "runs_with_same_final_test_acc": 2}


def test_train_many_prose_follows_the_figures_whichever_way_batching_went():
    slower, faster = (train_many.verdict(_train_many_result(r)) for r in (1.3, 0.4))
    assert slower.startswith("Batching did not pay") and "1.30×" in slower and "stacking" in slower
    assert faster.startswith("Batching paid") and "0.40×" in faster and "stacking" not in faster


def test_train_speed_reports_where_the_preset_stopped_when_the_file_records_it():
    grok = json.loads(train_speed.RESULTS.read_text())["time_to_grok"] | {"stopped_at": 1670, "stop_reason": "grokked"}
    sentence = train_speed.grok_sentence(grok)
    assert "ended at step 1,670 (grokked" in sentence and "predates" not in sentence


def test_train_many_times_chapter_6s_runs_with_the_stop_rule_off():
    cfgs = train_many.robustness_set()
    assert {(c.p, c.seed) for c in cfgs} == {(p, s) for p in ROBUSTNESS_MODULI for s in ROBUSTNESS_SEEDS}
    for c in cfgs:
        assert c == robustness_config(c.p, c.seed, steps=train_many.STEPS[c.p], stop_margin=0)
        assert c.stop_margin == 0 and robustness_config(c.p, c.seed).stop_margin > 0
