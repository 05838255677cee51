"""Reproductions of the ResNet papers' experiments: the degradation problem (He et al. 2016, Fig. 6) and
the CIFAR-10 recipes of He et al. 2016a/b, with a report writer (PNG + markdown + JSON)."""

from resnetkit.reproduce.cifar import RECIPES, cifar_config
from resnetkit.reproduce.degradation import run_degradation

__all__ = ["RECIPES", "cifar_config", "run_degradation"]
