"""Pure tensor functions on boxes, like torchvision.ops: formats and IoU, the box-loss family and its registry, NMS.

May import: the foundation (utils root) only.
"""
