"""The grokking course's library: one module per concept, in layers (a module imports only from its own layer or
below; tests/test_layers.py enforces it, and keeps modules ≤ 400 lines and functions ≤ 40).

  4  checks/                     one check_<exercise>(fn) per exercise: harness, compare, inputs, one module a chapter
  3  plotting                    the house style for plotly figures, phase shading, offline rendering in the book
  2  train/                      config, store (run files, one writer), lock, loop, single, many, adamw, cli (training)
  2  mechanism ablation progress the algorithm read off the weights, ablations, progress measures and phases,
     outcomes claims original    what became of a run, the chapters' claims, the authors' checkpoints, clock or
     pizza                       pizza (analysis: never imports training)
  1  model forward               the HookedTransformer (the only transformer_lens import); the model's maths, once
  0  data metrics fourier        the dataset and split, the one loss and accuracy, the Fourier basis and key
     stability                   frequencies, softmax collapse / StableMax / ⊥Grad / Grokfast (maths)
Notebooks sit on top and may import anything.
"""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
