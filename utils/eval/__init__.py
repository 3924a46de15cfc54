"""The numbers of a validation: AP, P/R, fitness, confusion matrix, size buckets, COCO evaluation.

May import: utils.dataset (ignore areas), utils.config, utils.ops and the foundation.
"""
