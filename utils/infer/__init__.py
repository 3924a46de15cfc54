"""Inference and export: backends and the Detector API, sliced inference, streams, the torch.hub model and its
results, drawing, export writers and int8 quantisation.

May import: utils.dataset, utils.eval, utils.config, utils.ops, models, utils.checkpoints, utils.plots and the
foundation; never utils.train, data/ or an entry point.
"""
