"""Training mixkit language models: data + tokenizer, the loop, checkpoints, plots, generation.

Example::

    result = train(load_config("tiny"), out_dir="runs/tiny")
    print(result.val_ppl, generate_text("runs/tiny", prompt="ROMEO:"))
"""

from mixkit.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from mixkit.train.config import RunConfig, load_config, preset_names
from mixkit.train.data import prepare_corpus
from mixkit.train.generate import generate_text, load_model
from mixkit.train.loop import Callback, Trainer, evaluate, train
from mixkit.train.optim import lr_at
from mixkit.train.runlog import TrainResult
from mixkit.train.setup import RunPlan, plan_run

__all__ = [
    "Callback",
    "Checkpoint",
    "RunConfig",
    "RunPlan",
    "TrainResult",
    "Trainer",
    "evaluate",
    "generate_text",
    "load_checkpoint",
    "load_config",
    "load_model",
    "lr_at",
    "plan_run",
    "preset_names",
    "prepare_corpus",
    "save_checkpoint",
    "train",
]
