"""The training loss: ComputeLoss (targets, scaled gains, composition of the pure box losses), label assignment,
Tiny Focal Loss weights.

May import: utils.dataset, utils.config, utils.ops and the foundation.
"""
