"""PSF-parameter networks: architectures, training, evaluation, export and loading."""

from livepsf.net.card import ModelCard, OpticsCard, ParamCard
from livepsf.net.export import export_model, file_sha256
from livepsf.net.registry import PSFNet, available_models, load_model, models_dir

__all__ = [
    "ModelCard",
    "OpticsCard",
    "PSFNet",
    "ParamCard",
    "available_models",
    "export_model",
    "file_sha256",
    "load_model",
    "models_dir",
]
