"""The grokking course's library: one module per concept, in layers (a module imports only from its own layer or
below; tests/test_layers.py enforces it).

  4  checks                      one check_<exercise>(fn) per exercise
  3  plotting                    the house style for plotly figures, phase shading, offline rendering in the book
  2  train                       the fast, exact trainer, cached runs, batched runs and the CLI (training)
  2  mechanism ablation progress the algorithm read off the weights, ablations, progress measures and phases,
     outcomes claims original    what became of a run, the chapters' claims, the authors' checkpoints, clock or
     pizza                       pizza (analysis: never imports training)
  1  model                       the one-layer HookedTransformer (the only module that imports transformer_lens)
  0  data metrics fourier        the dataset and split, the one loss and accuracy, the Fourier basis and key
     stability                   frequencies, softmax collapse / StableMax / ⊥Grad / Grokfast (maths)
Notebooks sit on top and may import anything.
"""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
