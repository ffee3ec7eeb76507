"""Class activation maps: AReAM's affinity re-activation (Eqs. 7-12), multi-scale CAM inference with its
refinement variants, and the export stage's library.
"""
