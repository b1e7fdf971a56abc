"""Shared helpers for the grokking course: one module per concept.

utils.data      the modular-addition dataset and its train/test split
utils.model     the one-layer HookedTransformer (the only module that imports transformer_lens)
utils.train     a fast, exact trainer, cached runs with checkpoints, and its CLI
"""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
