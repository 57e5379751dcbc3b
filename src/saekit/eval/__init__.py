"""Evaluation: reconstruction metrics, ground-truth recovery, downstream splicing, steering."""
