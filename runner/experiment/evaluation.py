"""Evaluation: loss, accuracy and NFE over a split, and the classification report of thesis appendix D."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, confusion_matrix, precision_recall_fscore_support, roc_auc_score
from torch import nn

from data.tensors import Split
from models.ode_block import forward_nfe
from runner.experiment.memory import PhaseMemory
from runner.experiment.precision import autocast


@dataclass
class Predictions:
    loss: float
    accuracy: float
    mean_fnfe: float
    probabilities: np.ndarray
    labels: np.ndarray

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)


@torch.no_grad()
def predict(
    model: nn.Module, split: Split, batch_size: int, memory: PhaseMemory | None = None, precision: str = "fp32"
) -> Predictions:
    """Mean loss, accuracy, mean forward NFE per batch and class probabilities, in evaluation mode, computed
    in `precision` (runner.experiment.precision); `memory` traces the first batch. The loss and the
    probabilities stay on the model's device until the split is done: the host reads them once, not per batch."""
    was_training = model.training
    model.eval()
    total_loss, nfe, batches, probs = None, 0, 0, []
    try:
        for x, y in split.batches(batch_size):
            if memory is not None:
                memory.batch_started(saving=False)
            with autocast(precision, x.device):
                logits = model(x)
            if memory is not None:
                memory.batch_done()
            loss = F.cross_entropy(logits.float(), y, reduction="sum").double()
            total_loss = loss if total_loss is None else total_loss + loss
            nfe += forward_nfe(model)
            batches += 1
            probs.append(torch.softmax(logits.float(), dim=1))
    finally:
        model.train(was_training)
    probabilities = torch.cat(probs).cpu().numpy()
    labels = split.y.cpu().numpy()
    n = len(labels)
    return Predictions(
        float(total_loss) / n, float((probabilities.argmax(1) == labels).mean()), nfe / batches, probabilities, labels
    )


def classification_report(labels: np.ndarray, probabilities: np.ndarray, class_names: list[str]) -> dict:
    """Confusion matrix, per-class precision/recall/F1/support, one-vs-rest ROC AUC and average precision."""
    classes = list(range(len(class_names)))
    predicted = probabilities.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted, labels=classes, zero_division=0)
    per_class = []
    for c, name in enumerate(class_names):
        positives = labels == c
        both_present = positives.any() and (~positives).any()  # AUC/AP are undefined otherwise
        per_class.append(
            {
                "class": name,
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "support": int(support[c]),
                "roc_auc": float(roc_auc_score(positives, probabilities[:, c])) if both_present else math.nan,
                "average_precision": float(average_precision_score(positives, probabilities[:, c]))
                if both_present
                else math.nan,
            }
        )
    return {
        "confusion_matrix": confusion_matrix(labels, predicted, labels=classes).tolist(),
        "per_class": per_class,
        "macro_f1": float(np.mean(f1)),
    }
