"""Moving mixkit language models in and out: Hugging Face folders both ways, GGUF for llama.cpp,
and sparse upcycling of dense models into MoEs.

    export_hf(load_run("runs/moe"), Path("hf-moe"))            # -> Mixtral / Qwen2-MoE / Llama / GPT-2
    import_hf(Path("hf-moe"), Path("runs/back"))               # -> a run `mixkit train --resume` continues
    export_gguf(load_run("runs/moe"), Path("moe.gguf"), "f16")  # -> llama.cpp's llama architecture
    upcycle(Path("runs/dense"), Path("runs/up"), experts=8)    # -> an MoE whose experts copy the FFN

Each writes its output whole or not at all, and refuses what has no exact twin with a ConfigError
naming the field (see hf_export's table).
"""

from mixkit.convert.gguf_export import export_gguf
from mixkit.convert.hf_export import export_hf, hf_config, hf_model
from mixkit.convert.hf_import import import_hf, load_hf
from mixkit.convert.runs import MixkitRun, is_mixkit_run, load_run
from mixkit.convert.upcycle import keeps_dense_output, upcycle, upcycle_model

__all__ = [
    "MixkitRun",
    "export_gguf",
    "export_hf",
    "hf_config",
    "hf_model",
    "import_hf",
    "is_mixkit_run",
    "keeps_dense_output",
    "load_hf",
    "load_run",
    "upcycle",
    "upcycle_model",
]
