"""Multi-object tracking of detections through video: a ByteTrack-style tracker (Kalman filter, two-stage
association by IoU, NWD or size-normalised centre distance, births and deaths), camera-motion compensation,
MOTChallenge text files, detect.py's per-source tracking and scoring with motmetrics (``python -m
utils.track.evaluate``).

May import: utils.infer, utils.dataset, utils.eval, utils.config, utils.ops, utils.checkpoints, utils.plots and the
foundation; never utils.train, data/ or an entry point.
"""
