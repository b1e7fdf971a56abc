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
`@harness.guarded(name)`, and list it in its chapter module's `__all__` (this package re-exports every chapter
module's checks).
"""
import importlib
import pkgutil

from utils.checks.harness import CheckFailed, set_time_limit, time_limit

__all__ = ["CheckFailed", "set_time_limit", "time_limit"]
for _chapter in sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name.startswith("ch")):
    # Every chapter module's checks (its __all__), in chapter order: a new check needs no edit here.
    _module = importlib.import_module(f"{__name__}.{_chapter}")
    globals().update({name: getattr(_module, name) for name in _module.__all__})
    __all__ += list(_module.__all__)
