"""Shared helpers for the grokking course: one module per concept.

utils.data       the modular-addition dataset and its train/test split
utils.model      the one-layer HookedTransformer (the only module that imports transformer_lens)
utils.train      a fast, exact trainer, cached runs with checkpoints, batched runs, and its CLI
utils.fourier    the Fourier basis on Z_p, 1-D/2-D transforms, the key frequencies
utils.mechanism  the algorithm read off the weights: neuron frequencies and clusters, W_L, cosine fits
utils.ablation   removing or keeping frequency directions, neuron projections and ablations
utils.progress   restricted/excluded loss, Gini, weight norm, all checkpoints at once, phase boundaries
utils.plotting   the house style for plotly figures and offline rendering in the book
utils.checks     one check_<exercise>(fn) per exercise
"""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
