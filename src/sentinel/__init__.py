"""Sentinel: a Hydra-configured experiment framework for YOLO object detection.

Kept import-light on purpose: `train.py --cfg job` and `--help` import this package and must not pull in
torch, ultralytics, ray or fiftyone. Stage modules import those inside their functions.
"""

__version__ = "0.1.0"

# Registered on import: a Hydra job in a Ray worker resolves its config there without running train.py.
from sentinel.config.resolvers import register_resolvers

register_resolvers()
