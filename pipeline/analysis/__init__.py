"""Reading the results: the layer-wise affinity analysis (Sec. IV-A, V-B) and the AReAM-independent
calibration of a dataset against VOC.
"""
