"""Configuration read from YAML into typed, validated, frozen objects: hyperparameters (``Hyp``) and data YAMLs.

May import: utils.ops (box-loss names for validation) and the foundation.
"""
