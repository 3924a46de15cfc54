"""Training and validation data: the loader and its label cache, label files, ignore areas, augmentations,
small-object copy-paste, image discovery and reading.

May import: utils.config, utils.ops and the foundation.
"""
