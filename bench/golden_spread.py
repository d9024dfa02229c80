"""How far the tiny preset's per-step losses move when the CPU kernels change (issue 20).

The same torch wheel runs other kernels on another CPU: ATen's own vectorised code per CPU
capability, MKL's BLAS/VML code paths, oneDNN's (the fp32 LSTM). This machine emulates other
CPUs by capping each library's instruction set with its environment variable, runs the golden
training (`tiny`, 150 steps, 1 thread) once per setting in a fresh process, in float32 and in
float64, and compares every per-step loss with the unrestricted run's:

    python bench/golden_spread.py                       # the loss table (~2 min on one core)
    python bench/golden_spread.py --ops                 # + which ops change bits, per setting
    python bench/golden_spread.py --settings native aten=avx2 --dtypes float32

Columns: the first step whose loss differs at all; the largest |loss - native loss| over steps
1..s for s = 1, 10, 50, 150; the first step where the MoE layer ranks the experts differently
for some token (top-k indices of the router, k+1 of them for noisy top-k).

--ops records every aten op of the first optimizer step (forward, backward, AdamW) in the native
run, replays each op on the recorded inputs under every setting and lists the ops whose outputs
changed, with their largest |difference|.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import pickle
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SETTINGS: dict[str, dict[str, str]] = {
    "native": {},
    "aten=avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "aten=default": {"ATEN_CPU_CAPABILITY": "default"},
    "mkl=AVX2": {"MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "mkl=SSE4_2": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "mkl cbwr=COMPATIBLE": {"MKL_CBWR": "COMPATIBLE"},
    "onednn=AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2"},
    "all three AVX2": {
        "ATEN_CPU_CAPABILITY": "avx2",
        "MKL_ENABLE_INSTRUCTIONS": "AVX2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
    },
}
STEPS_SHOWN = (1, 10, 50, 150)


# --- worker: runs in a fresh process per setting (the variables are read when torch loads) ---
def _worker(mode: str, dtype: str, out: str, record: str | None) -> None:
    import torch  # noqa: PLC0415 - lazy: the parent process never loads torch
    from torch.utils._python_dispatch import TorchDispatchMode  # noqa: PLC0415 - lazy
    from torch.utils._pytree import tree_map  # noqa: PLC0415 - lazy

    from mixkit.train import Trainer, load_config  # noqa: PLC0415 - lazy

    torch.set_default_dtype(getattr(torch, dtype))
    if mode == "replay":
        assert record is not None
        Path(out).write_text(json.dumps(_replay(pickle.loads(Path(record).read_bytes()))))
        return

    def keep(x: Any) -> Any:
        return x.detach().clone() if isinstance(x, torch.Tensor) else x

    class Spy(TorchDispatchMode):
        """Keeps the router's top-k indices, and in `record` mode every op's inputs/outputs."""

        def __init__(self) -> None:
            super().__init__()
            self.topk: list[list[list[int]]] = []
            self.calls: list[tuple] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            inputs = tree_map(keep, (args, kwargs)) if mode == "record" else None
            result = func(*args, **kwargs)
            if func is torch.ops.aten.topk.default:
                self.topk.append(result[1].tolist())
            elif mode == "record" and func.namespace == "aten" and _replayable(func._opname):
                self.calls.append((func.name(), *_numpy(inputs), _numpy(tree_map(keep, result))))
            return result

    cfg = load_config("tiny", overrides=["train.log_every=1"])
    trainer = Trainer(cfg, Path(tempfile.mkdtemp()) / "run")
    losses, topk = [], []
    while not trainer.finished:
        with Spy() as spy:
            trainer.step()
        losses.append(trainer.train_loss)
        topk.append(spy.topk)
        if mode == "record":
            Path(record or "").write_bytes(pickle.dumps(spy.calls))
            mode = "losses"
    Path(out).write_text(json.dumps({"losses": losses, "topk": topk}))


def _replayable(op: str) -> bool:
    """Not random draws (their generator state is not recorded) nor storage swaps."""
    return not any(word in op for word in ("rand", "normal", "set_"))


def _numpy(tree: Any) -> Any:
    """Tensors as ('T', array) so the record pickles without torch's storage machinery."""
    import torch  # noqa: PLC0415 - lazy
    from torch.utils._pytree import tree_map  # noqa: PLC0415 - lazy

    return tree_map(lambda x: ("T", x.numpy()) if isinstance(x, torch.Tensor) else x, tree)


def _replay(calls: list[tuple]) -> dict[str, list[float]]:
    """{op: [calls, calls that changed, largest |diff|]} for the recorded ops, rerun here."""
    import torch  # noqa: PLC0415 - lazy
    from torch.utils._pytree import tree_flatten, tree_map  # noqa: PLC0415 - lazy

    def is_t(x: Any) -> bool:
        return isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], str) and x[0] == "T"

    def back(tree: Any) -> Any:
        return tree_map(lambda x: torch.from_numpy(x[1]) if is_t(x) else x, tree, is_leaf=is_t)

    stats: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0, 0.0])
    for name, args, kwargs, expected in calls:
        if name.startswith("aten::empty"):
            continue  # uninitialised memory
        ns, rest = name.split("::")
        op, _, overload = rest.partition(".")
        func = getattr(getattr(getattr(torch.ops, ns), op), overload or "default")
        got = tree_flatten(func(*back(args), **back(kwargs)))[0]
        want = tree_flatten(back(expected))[0]
        diff = max(
            [
                (a - b).abs().max().item()
                for a, b in zip(want, got, strict=False)
                if isinstance(a, torch.Tensor) and a.is_floating_point() and a.numel()
            ],
            default=0.0,
        )
        row = stats[name]
        row[0] += 1
        row[1] += diff > 0
        row[2] = max(row[2], diff)
    return dict(stats)


# --- parent: one process per setting, then the tables ---------------------------------------
def _run(setting: str, *worker_args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **SETTINGS[setting]}
    cmd = [sys.executable, __file__, "--worker", *worker_args]
    subprocess.run(cmd, env=env, check=True)


def _first_flip(a: list, b: list) -> int | None:
    return next((i + 1 for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), None)


def loss_table(settings: list[str], dtypes: list[str], tmp: Path) -> None:
    print(
        "| setting | dtype | first step differing | "
        + " | ".join(f"max diff steps 1..{s}" for s in STEPS_SHOWN)
        + " | first expert-ranking flip |"
    )
    print("|---|---|---|" + "---|" * len(STEPS_SHOWN) + "---|")
    for dtype in dtypes:
        runs = {}
        for name in ["native", *[s for s in settings if s != "native"]]:
            out = tmp / f"{dtype}-{len(runs)}.json"
            _run(name, "losses", dtype, str(out))
            runs[name] = json.loads(out.read_text())
        ref = runs["native"]
        for name, run in runs.items():
            d = [abs(a - b) for a, b in zip(ref["losses"], run["losses"], strict=True)]
            first = next((i + 1 for i, v in enumerate(d) if v > 0), None)
            cells = " | ".join(f"{max(d[:s]):.1e}" for s in STEPS_SHOWN)
            flip = _first_flip(ref["topk"], run["topk"])
            print(f"| {name} | {dtype} | {first or '-'} | {cells} | {flip or '-'} |")


def op_table(settings: list[str], dtypes: list[str], tmp: Path) -> None:
    for dtype in dtypes:
        record = tmp / f"ops-{dtype}.pkl"
        _run("native", "record", dtype, str(tmp / "unused.json"), str(record))
        print(f"\nOps of step 1 ({dtype}) whose outputs change, rerun on the same inputs:\n")
        print("| setting | op: changed calls / calls, max abs diff |\n|---|---|")
        for name in settings:
            out = tmp / f"replay-{dtype}.json"
            _run(name, "replay", dtype, str(out), str(record))
            stats = json.loads(out.read_text())
            changed = sorted((-row[2], op, row) for op, row in stats.items() if row[1])
            cells = "; ".join(f"{op} {r[1]}/{r[0]}, {r[2]:.1e}" for _, op, r in changed)
            print(f"| {name} | {cells or 'none'} |")


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        _worker(*sys.argv[2:5], sys.argv[5] if len(sys.argv) > 5 else None)
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    p.add_argument("--ops", action="store_true", help="also replay step 1's ops per setting")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        loss_table(args.settings, args.dtypes, Path(tmp))
        if args.ops:
            op_table(args.settings, args.dtypes, Path(tmp))


if __name__ == "__main__":
    main()
