"""Names of the files and folders a run directory holds, in one place.

A run directory written by :func:`tgcnet.engine.train`::

    RUN_DIR/train_config.json     resolved TrainConfig + model config (+ world size)
    RUN_DIR/log.jsonl             one JSON object per validated epoch
    RUN_DIR/labelled.json         semi-supervised runs: which training images keep their masks
    RUN_DIR/best/                 the best model by validation Dice (save_pretrained layout)
    RUN_DIR/best/inference.json   what inference needs that the model config lacks
    RUN_DIR/last/                 the resumable checkpoint (see tgcnet.engine.train_state)
    RUN_DIR/last/trainer_state.json, optim.pt
    RUN_DIR/last/teacher.safetensors   semi-supervised runs with pseudo-labels: the mean teacher
    RUN_DIR/.lock                 while a run trains: which process writes here (see tgcnet.engine.run_dir)

Evaluation writes ``metrics.json`` and ``per_image.csv``; prediction of several images
writes ``predictions.csv``. Readers and writers import the names from here, so a file
is never spelled in two places; tgcnet.engine.run_dir turns them into a run's paths. They
live apart from it because inference, evaluation and the CLI need the names without the
training machinery.
"""
from __future__ import annotations

__all__ = ["TRAIN_CONFIG_NAME", "LOG_NAME", "INFERENCE_NAME", "BEST_DIR", "LAST_DIR", "TRAINER_STATE_NAME",
           "OPTIM_STATE_NAME", "MODEL_CONFIG_NAME", "WEIGHTS_NAME", "METRICS_NAME", "PER_IMAGE_NAME",
           "PREDICTIONS_NAME", "LOCK_NAME", "LABELLED_NAME", "TEACHER_NAME"]

TRAIN_CONFIG_NAME = "train_config.json"
LOG_NAME = "log.jsonl"
LABELLED_NAME = "labelled.json"
TEACHER_NAME = "teacher.safetensors"
INFERENCE_NAME = "inference.json"
BEST_DIR = "best"
LAST_DIR = "last"
TRAINER_STATE_NAME = "trainer_state.json"
OPTIM_STATE_NAME = "optim.pt"
#: as ``TGCNet.save_pretrained`` writes them (tgcnet.hub.CONFIG_NAME / WEIGHTS_NAME)
MODEL_CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
METRICS_NAME = "metrics.json"
PER_IMAGE_NAME = "per_image.csv"
PREDICTIONS_NAME = "predictions.csv"
#: hidden and no output: removed when its run ends; one a crash left behind is held by no one
LOCK_NAME = ".lock"
