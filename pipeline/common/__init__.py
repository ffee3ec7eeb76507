"""Plumbing every stage shares: file IO and atomic writes, devices, the per-image process pool, progress
bars, the label palette, Markdown tables, and the import closure DVC lists as code dependencies.
"""
