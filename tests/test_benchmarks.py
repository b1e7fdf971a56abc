"""The benchmark results the README shows are the ones on file, not typed by hand."""
import json

import pytest

from benchmarks import robustness_stop, soak, sweep_presets, train_many, train_speed
from benchmarks.common import replace_block
from utils import REPO_ROOT, claims
from utils.train import ROBUSTNESS_MODULI, ROBUSTNESS_SEEDS, TrainConfig, robustness_config


def test_readme_robustness_stop_table_is_generated_from_the_results_file():
    result = json.loads(robustness_stop.RESULTS.read_text())
    text = (REPO_ROOT / "README.md").read_text()
    assert robustness_stop.readme_with_table(text, result) == text, \
        "README.md's robustness_stop table differs from benchmarks/results/robustness_stop.json: run " \
        "`.venv/bin/python benchmarks/robustness_stop.py --readme`"


def test_chapter_6_variance_threshold_lies_below_every_measured_run_at_its_stop():
    rows = json.loads(robustness_stop.RESULTS.read_text())["rows"]
    assert {(r["p"], r["seed"]) for r in rows} == set(robustness_stop.PAIRS)
    stopped = [r["explained"] for r in rows if r["stop_at"] is not None]
    assert len(stopped) == len(rows) and min(stopped) >= claims.ROBUST_EXPLAINED


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
            {"how": "batched (train_many)", "ms_per_step": 100.0 * batched_ratio,
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


def test_the_replayed_products_are_the_steps_own_matrix_products_and_nothing_else():
    from torch.utils.flop_counter import FlopCounterMode

    from benchmarks.common import fast_loop
    cfg = TrainConfig.preset("workshop", p=23)
    count, replay = train_speed.products_alone(fast_loop(cfg, compile=False))
    with FlopCounterMode(display=False) as counter:
        replay()
    assert count >= 12  # MLP in and out, unembed, W_O: three products each (forward, two gradients)
    assert counter.get_total_flops() / 1e9 == pytest.approx(train_speed.step_gflop(cfg, "cpu"), rel=1e-12)


def test_products_sentence_says_what_the_13x_target_leaves_for_the_rest_of_the_step():
    room = train_speed.products_sentence({"ms": 20.0, "products": 33, "products_alone_ms": 22.0})
    assert "1.10× the floor" in room and "leaves 4.0 ms per step" in room
    none = train_speed.products_sentence({"ms": 17.0, "products": 33, "products_alone_ms": 22.3})
    assert "1.31× the floor" in none and "nothing for everything else" in none


def test_train_many_times_chapter_6s_runs_with_the_stop_rule_off():
    cfgs = train_many.robustness_set()
    assert {(c.p, c.seed) for c in cfgs} == {(p, s) for p in ROBUSTNESS_MODULI for s in ROBUSTNESS_SEEDS}
    for c in cfgs:
        assert c == robustness_config(c.p, c.seed, steps=train_many.STEPS[c.p], stop_margin=0)
        assert c.stop_margin == 0 and robustness_config(c.p, c.seed).stop_margin > 0


BOOK_LOG = """00:00:00 test -x .venv/bin/python || python3 -m venv .venv
00:02:50 .venv/bin/python -m utils.train --preset workshop
00:04:00 .venv/bin/jupyter-book build . -W -n --keep-going
00:05:31 /tmp/x/repo/solutions/01_training.ipynb: Executed notebook in 90.50 seconds [mystnb]
00:05:40 /tmp/x/repo/book/instructor_guide.ipynb: Executed notebook in 1.20 seconds [mystnb]
00:10:40 /tmp/x/repo/solutions/06_beyond.ipynb: Executed notebook in 299.00 seconds [mystnb]
00:14:40 /tmp/x/repo/solutions/07_authors_model.ipynb: Executed notebook in 240.00 seconds [mystnb]
00:15:00 done"""


def test_book_build_log_gives_each_phase_and_each_notebook():
    from benchmarks import book_build
    result = book_build.parse_log(BOOK_LOG)
    assert result["phases_s"] == {"install": 170, "workshop run": 70, "book build": 660}
    assert result["total_s"] == 900
    assert result["notebooks_s"] == {"book/instructor_guide.ipynb": 1.2, "solutions/01_training.ipynb": 90.5,
                                     "solutions/06_beyond.ipynb": 299.0, "solutions/07_authors_model.ipynb": 240.0}


def test_book_build_budgets_are_per_chapter_and_grow_with_later_chapters():
    from benchmarks import book_build
    verdict = book_build.within_budget(book_build.parse_log(BOOK_LOG))
    assert verdict["solutions/06_beyond.ipynb"]  # trains many models: 5 minutes
    assert not verdict["solutions/07_authors_model.ipynb"]  # 4 minutes against 3
    assert verdict["make book"]  # 15 minutes against 12 + chapter 7's 3
    assert verdict["make book, chapters 1-6"]  # 15 minutes less chapter 7's 4: 11 against 12
    assert book_build.chapters_1_to_6_s(book_build.parse_log(BOOK_LOG)) == 660


def test_book_build_refuses_a_log_without_its_phases():
    from benchmarks import book_build
    with pytest.raises(ValueError, match="not a stamped `make book` log"):
        book_build.parse_log("pip install ...\nExecuted notebook in 3 seconds")


def test_readme_book_build_figures_are_generated_from_the_results_file():
    from benchmarks import book_build
    result = json.loads(book_build.RESULTS.read_text())
    text = (REPO_ROOT / "README.md").read_text()
    assert book_build.readme_with_figures(text, result) == text, \
        "README.md's book_build figures differ from benchmarks/results/book_build.json: run " \
        "`.venv/bin/python benchmarks/book_build.py --readme`"
