"""Advice from the training labels: their size statistics at an input size (``label_stats``), the choice of
tiny-object options from them and the rule table ``hyp/tiny_auto.yaml`` (``choose``), and ``train.py --tiny auto``
and ``python -m utils.advise.advise DATA.yaml`` built on both (``advise``).

May import: utils.train (AutoAnchor's label sizes), utils.dataset, utils.loss, utils.config, models and the
foundation; never utils.infer, data/ or an entry point.
"""
