"""gvu: Learning to Generate via Understanding (GvU) for unified multimodal models.

Subpackages:
  gvu.world   the nano world: scenes, renderer, GenEval-format prompt suites, exact evaluator
  gvu.models  the unified-model adapter and its backends (transformers' Janus classes)
"""

__version__ = "0.1.0"
