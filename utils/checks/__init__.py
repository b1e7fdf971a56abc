"""Exercise checks: `check_<exercise>(fn)` runs a learner's function on fixed, seeded-random and edge inputs,
compares it with the reference in utils, and either prints one line of praise or raises `CheckFailed` with a
plain-English message: which input, expected vs got, and a hint about the likely mistake.

Layout: `harness` calls the learner's function safely (copies of the inputs, a time limit, every exception turned
into a message), `compare` compares answers and names mistakes, `inputs` builds the planted inputs (shared with
the tests), and one module per chapter holds its checks, in chapter order. The references live in utils
(fourier, mechanism, ablation, progress, train, outcomes); the checks import them, never the other way round.

Adding a check for a new exercise: compute the reference first, call the learner's code through
`harness.call(name, fn, *args, on=…, names=…)`, compare with `compare.expect_tensor` (give it the plausible wrong
answers as `mistakes`, so a match names the mistake), finish with `harness.passed`, and decorate it with
`@harness.guarded(name)`.
"""
from utils.checks.ch01_training import check_loss_fn, check_make_dataset, check_model_config, check_train_step
from utils.checks.ch02_periodicity import (check_embedding_frequency_norms, check_fft1d, check_fft2d,
                                           check_fourier_basis, check_key_frequencies)
from utils.checks.ch03_algorithm import (check_additive_share, check_cosine_variance_explained,
                                         check_fourier_multiplication, check_neuron_fit_r2,
                                         check_output_frequency_shares, check_W_L_fourier)
from utils.checks.ch04_ablations import (check_ablate_neurons, check_keep_frequencies, check_project_onto_frequency,
                                         check_remove_frequencies, check_sum_directions)
from utils.checks.ch05_progress import check_embedding_norms, check_gini, check_restricted_and_excluded
from utils.checks.ch06_beyond import check_difference_waves, check_fourier_subtraction, check_outcome
from utils.checks.ch09_why_slow import (check_collapsed_share, check_grokfast_filter, check_orthogonal_gradient,
                                        check_stablemax)
from utils.checks.harness import CheckFailed, set_time_limit, time_limit

__all__ = ["CheckFailed", "set_time_limit", "time_limit",
           # chapter 1
           "check_make_dataset", "check_model_config", "check_loss_fn", "check_train_step",
           # chapter 2
           "check_fourier_basis", "check_fft1d", "check_fft2d", "check_embedding_frequency_norms",
           "check_key_frequencies",
           # chapter 3
           "check_cosine_variance_explained", "check_W_L_fourier", "check_additive_share", "check_neuron_fit_r2",
           "check_output_frequency_shares", "check_fourier_multiplication",
           # chapter 4
           "check_sum_directions", "check_remove_frequencies", "check_keep_frequencies",
           "check_project_onto_frequency", "check_ablate_neurons",
           # chapter 5
           "check_restricted_and_excluded", "check_gini", "check_embedding_norms",
           # chapter 6
           "check_outcome", "check_difference_waves", "check_fourier_subtraction",
           # chapter 9
           "check_collapsed_share", "check_stablemax", "check_orthogonal_gradient", "check_grokfast_filter"]
