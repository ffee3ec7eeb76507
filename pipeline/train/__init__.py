"""The training stages' libraries: the shared harness (distributed setup, schedule, checkpoints), the corpus
pretraining with its ImageNet teacher, and the classifier, AffinityNet and segmenter trainers.
"""
