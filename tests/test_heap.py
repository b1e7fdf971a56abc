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
    from utils.forward import stacked
    from utils.train import TrainConfig, run_model, trainable_params
    from utils.train.heap import keep_freed_memory
    from utils.train.single import one_run_loss

    cfg = TrainConfig.preset("workshop")
    params = trainable_params(run_model(cfg))
    a, b, y = (torch.randint(cfg.p, (4000,)) for _ in range(3))

    def faults_per_step(steps=10):
        for _ in range(3):  # warm up
            one_run_loss(params, a, b, y).backward()
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(steps):
            one_run_loss(params, a, b, y).backward()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / steps

    default = faults_per_step()
    assert keep_freed_memory(), "mallopt refused"
    print(default, faults_per_step())
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc (Linux, Colab) only")
def test_a_training_step_reuses_freed_memory_instead_of_faulting_in_new_pages():
    done = subprocess.run([sys.executable, "-c", MEASURE, str(REPO_ROOT)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    default, kept = map(float, done.stdout.split())
    assert kept < 500 and kept < default / 10, f"page faults per step: {default:.0f} by default, {kept:.0f} kept"
