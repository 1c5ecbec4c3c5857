"""Alias kept for the documented path ``poolft.cpu_dropout.use_cpu_dropout``; the code lives in
``poolft.training.cpu_dropout``."""

from .training.cpu_dropout import CpuDropout, cpu_dropout, use_cpu_dropout

__all__ = ["CpuDropout", "cpu_dropout", "use_cpu_dropout"]
