"""`mixkit convert` and `mixkit upcycle`: parse -> call mixkit.convert -> render."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from mixkit.cli.app import app, missing_extra
from mixkit.errors import ConfigError, DataError

console = Console()

Source = Annotated[Path, typer.Argument(help="a mixkit run or checkpoint folder, or an HF folder")]
Out = Annotated[Path, typer.Argument(help="where to write (must not exist yet)")]
To = Annotated[str, typer.Option("--to", help="hf (a folder), mixkit (a run folder) or gguf")]
Dtype = Annotated[str, typer.Option("--dtype", help="gguf: f16 or f32 matrices")]
Data = Annotated[
    str | None, typer.Option("--data", help="the run's text (default: Shakespeare); HF sources")
]
Sets = Annotated[
    list[str] | None,
    typer.Option("--set", help="a field of the written run, e.g. --set train.batch_size=8"),
]
Experts = Annotated[int, typer.Option("--experts", "-E", help="experts per MoE layer")]
Every = Annotated[int, typer.Option("--every", help="block i is MoE when (i + 1) % N == 0")]
Router = Annotated[str, typer.Option("--router", help="topk, noisy_topk, switch, sigmoid_bias...")]
K = Annotated[int, typer.Option("--k", help="experts per token")]
Noise = Annotated[float, typer.Option("--noise", help="expert-copy noise, x each weight's std")]
Seed = Annotated[int, typer.Option("--seed", help="seeds the new router and the noise")]


def _api() -> Any:
    try:
        import transformers  # lazy: the hf extra, which `mixkit --help` never loads

        from mixkit import convert as api  # lazy: torch and transformers
    except ImportError as e:
        raise missing_extra(e, "hf") from None
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return api


def _mixkit_source(api: Any, source: Path) -> Any:
    if not source.exists():
        raise DataError(f"{str(source)!r} does not exist")
    if not api.is_mixkit_run(source):
        raise ConfigError(
            f"{str(source)!r} is not a mixkit run or checkpoint folder; --to hf and --to gguf "
            "convert mixkit models (--to mixkit converts a Hugging Face folder)"
        )
    return api.load_run(source)


@app.command()
def convert(
    source: Source, out: Out, to: To, dtype: Dtype = "f16", data: Data = None, set_: Sets = None
) -> None:
    """Convert a model: mixkit run -> HF folder or GGUF file, or HF folder -> mixkit run.

    mixkit convert runs/moe --to hf hf-moe; mixkit convert hf-moe --to mixkit runs/back;
    mixkit convert runs/moe --to gguf moe.gguf --dtype f16
    """
    api = _api()
    if to == "hf":
        kind = api.export_hf(_mixkit_source(api, source), out)
        console.print(f"wrote {out} ({kind}); load it with AutoModelForCausalLM.from_pretrained")
    elif to == "gguf":
        api.export_gguf(_mixkit_source(api, source), out, dtype)
        console.print(f"wrote {out} (llama.cpp llama architecture, {dtype})")
    elif to == "mixkit":
        if api.is_mixkit_run(source):
            raise ConfigError(f"{str(source)!r} is already a mixkit run")
        api.import_hf(source, out, data, set_ or [])
        console.print(f"wrote {out}; continue it with: mixkit train --resume --out {out} --steps N")
    else:
        raise ConfigError(f"--to {to!r}: choose hf, mixkit or gguf")


@app.command()
def upcycle(
    dense: Source,
    out: Out,
    experts: Experts,
    every: Every = 1,
    router: Router = "topk",
    k: K = 2,
    noise: Noise = 0.0,
    seed: Seed = 0,
    data: Data = None,
    set_: Sets = None,
) -> None:
    """Turn a dense transformer LM (a mixkit run or an HF Llama/Qwen2 folder) into an MoE whose
    experts all start as copies of its FFN (sparse upcycling); writes a run at step 0."""
    api = _api()
    options = {"router": router, "k": k}
    _, exact = api.upcycle(dense, out, experts, every, options, noise, seed, data, set_ or [])
    same = "yes" if exact else "no (see mixkit.convert.upcycle for which routers keep it)"
    console.print(f"wrote {out}; logits at step 0 equal the dense model's: {same}")
    console.print(f"continue it with: mixkit train --resume --out {out} --steps N")
