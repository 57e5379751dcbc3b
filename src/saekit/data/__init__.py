"""Activation sources: synthetic ground truth, language models, and the on-disk activation store."""
