"""Training mixkit language models: data + tokenizer, the loop, checkpoints, plots, generation.

Example::

    result = train(load_config("tiny"), out_dir="runs/tiny")
    print(result.val_ppl, generate_text("runs/tiny", prompt="ROMEO:"))
"""

from mixkit.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from mixkit.train.config import RunConfig, load_config, preset_names
from mixkit.train.data import prepare_corpus
from mixkit.train.generate import generate_text, load_model
from mixkit.train.loop import Callback, Trainer, TrainResult, lr_at, train

__all__ = [
    "Callback",
    "Checkpoint",
    "RunConfig",
    "TrainResult",
    "Trainer",
    "generate_text",
    "load_checkpoint",
    "load_config",
    "load_model",
    "lr_at",
    "preset_names",
    "prepare_corpus",
    "save_checkpoint",
    "train",
]
