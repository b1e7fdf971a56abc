"""utils.train.heap: with freed memory kept, a training step reuses the last step's pages, not fresh ones."""
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO_ROOT

MEASURE = textwrap.dedent("""
    import resource, sys
    sys.path.insert(0, sys.argv[1])
    import torch
    from utils.train import TrainConfig, run_model, trainable_params
    from utils.train.heap import keep_freed_memory
    from utils.train.single import one_run_loss

    if sys.argv[2] == "kept":  # as the trainer does: before its first step
        assert keep_freed_memory(), "mallopt refused"
    cfg = TrainConfig.preset("workshop")
    params = trainable_params(run_model(cfg))
    a, b, y = (torch.randint(cfg.p, (4000,)) for _ in range(3))
    for _ in range(5):  # warm up
        one_run_loss(params, a, b, y).backward()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        one_run_loss(params, a, b, y).backward()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
""")


def faults_per_step(how: str) -> float:
    """Minor page faults per training step (forward and backward) in a fresh process, malloc as `how` says."""
    done = subprocess.run([sys.executable, "-c", MEASURE, str(REPO_ROOT), how], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc (Linux, Colab) only")
def test_a_training_step_reuses_freed_memory_instead_of_faulting_in_new_pages():
    default, kept = faults_per_step("default"), faults_per_step("kept")
    assert kept < default / 10, f"page faults per step: {default:.0f} by default, {kept:.0f} kept"
