"""Distillation methods: one loss per module, one registry of training steps."""

from export.distill import methods as _methods  # noqa: F401  (registers the methods)
from export.distill.registry import METHODS, DistillMethod, MethodContext, get_method, register

__all__ = ["METHODS", "DistillMethod", "MethodContext", "get_method", "register"]
