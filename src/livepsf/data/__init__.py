"""Training data: sharp textures, realistic degradation and an on-the-fly dataset with fixed eval sets.

>>> from livepsf.data import PatchDataset, eval_set
>>> loader = torch.utils.data.DataLoader(PatchDataset("Z-3", batch_size=64), batch_size=None)
>>> patches, targets = eval_set("Z-3", "val", n=2000)
"""

from livepsf.data import textures
from livepsf.data.dataset import EVAL_IMAGES, SPLITS, TRAIN_IMAGES, BatchSynthesizer, PatchDataset, eval_set
from livepsf.data.degrade import DEGRADATION_KINDS, DegradationConfig, apply_strength, camera_noise

__all__ = [
    "DEGRADATION_KINDS",
    "EVAL_IMAGES",
    "SPLITS",
    "TRAIN_IMAGES",
    "BatchSynthesizer",
    "DegradationConfig",
    "PatchDataset",
    "apply_strength",
    "camera_noise",
    "eval_set",
    "textures",
]
