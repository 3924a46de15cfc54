"""One training run: its named objects and builders, state on disk and --resume, learning-rate schedule, option
checks, loop helpers, precision, loggers, AutoAnchor, --evolve.

May import: utils.dataset, utils.loss, utils.eval, utils.config, utils.ops, models, utils.checkpoints, utils.plots
and the foundation; never utils.infer, data/ or an entry point.
"""
