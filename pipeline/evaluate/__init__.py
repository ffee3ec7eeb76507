"""Scoring: the segmenter's test-time inference, its confusion-matrix metrics and figures, and the run's
headline Table I gathered from the stages' metrics.
"""
