"""Accuracy on qata-mini: training runs and their report (``qata_mini``), figures (``plots``), and
inference-side levers scored on trained runs (``tta_lever``, ``threshold_lever``).

What counts as a finding is one rule for all of them: :func:`benchmarks.accuracy.spread.verdict`.
"""
