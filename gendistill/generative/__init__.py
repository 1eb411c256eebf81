"""Generative dataset distillation: Minimax diffusion on a class-conditional DiT (diffusers + accelerate)."""

from gendistill.generative.backbone import (
    Backbone,
    DiffFitDiT,
    build_dit,
    load_backbone,
    save_backbone,
    trainable_parameter_names,
)
from gendistill.generative.diffusion import GaussianDiffusion
from gendistill.generative.memory import ClassMemory, MinimaxMemories, minimax_losses
from gendistill.generative.method import DiTDistiller, MinimaxConfig, MinimaxDistiller, resolve_class_ids
from gendistill.generative.sample import sample_images

__all__ = ["Backbone", "ClassMemory", "DiTDistiller", "DiffFitDiT", "GaussianDiffusion", "MinimaxConfig",
           "MinimaxDistiller", "MinimaxMemories", "build_dit", "load_backbone", "minimax_losses",
           "resolve_class_ids", "sample_images", "save_backbone", "trainable_parameter_names"]
