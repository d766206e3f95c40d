"""Evaluation: confusion-matrix metrics, inference modes, prediction scoring and export, pictures."""

from crossregion.eval.inference import predict_probs
from crossregion.eval.metrics import ConfusionMatrix, metrics_dict, write_metrics

__all__ = ["ConfusionMatrix", "metrics_dict", "predict_probs", "write_metrics"]
