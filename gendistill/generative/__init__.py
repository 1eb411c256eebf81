"""Generative dataset distillation: Minimax diffusion on a class-conditional DiT (diffusers + accelerate)."""

from .backbone import Backbone, DiffFitDiT, build_dit, load_backbone, save_backbone, trainable_parameter_names
from .diffusion import GaussianDiffusion
from .memory import ClassMemory, MinimaxMemories, minimax_losses
from .method import DiTDistiller, MinimaxConfig, MinimaxDistiller, resolve_class_ids
from .sample import sample_images

__all__ = ["Backbone", "ClassMemory", "DiTDistiller", "DiffFitDiT", "GaussianDiffusion", "MinimaxConfig",
           "MinimaxDistiller", "MinimaxMemories", "build_dit", "load_backbone", "minimax_losses",
           "resolve_class_ids", "sample_images", "save_backbone", "trainable_parameter_names"]
