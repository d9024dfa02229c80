"""MoE layer benchmark: training, inference and decode time against a dense ideal and HF, side by side.

The ideal is a dense FFN of width k*d_hidden on the same tokens: the same multiply-adds as k experts
per token, with no routing, no permutation and one big matmul. A ratio of 1.0 means routing and
dispatch are free; "cost follows k, not E" means the ratio stays flat as E grows. SwiGLU layers
are compared with a dense SwiGLU ideal and with HF transformers' Mixtral block
(`experts_implementation="grouped_mm"`, torch._grouped_mm), which is SwiGLU too.

Every variant of a row runs in one process, interleaved round-robin, and the best of N repeats is
kept, so a noisy neighbour slows all variants alike rather than one of them. The layer is used as
a user's script would use it: THP_MEM_ALLOC_ENABLE is not set unless --thp is given.

    python bench/moe_layer.py                   # every section (make bench); --quick: small
    python bench/moe_layer.py --sections train decode --threads 1

Sections:
- train: forward+backward, fp32, dropless, k=2, grid T x d_model x E. Columns: the paper's
  router (noisy_topk, importance + load losses, ReLU experts) against a dense ReLU ideal; SwiGLU
  (topk router, no aux loss, as HF's block) against a dense SwiGLU ideal, and HF against the
  same. act: bytes autograd saves for backward (parameters and the input excluded) / the ideal's.
  Then each point's weight-traffic floor: the expert weights read twice and their gradients
  written once per step, at the bandwidth of a large copy, as a multiple of the ideal's time.
- infer: forward only under torch.inference_mode(), same grid, SwiGLU.
- decode: T in {1, 8, 64} tokens, E=64, d_model=512, inference. The floor there is reading the
  selected experts' weights once; the table gives the bytes of the experts actually chosen, the
  achieved GB/s, and its ratio to this machine's memory bandwidth measured with a large copy.
- bf16: the SwiGLU train and infer columns in bfloat16, where the CPU has bf16 instructions.
- compile: the SwiGLU layer under torch.compile (inductor) against eager, one training step.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

if "--thp" in sys.argv:  # read by torch once at start-up, so before the import
    os.environ["THP_MEM_ALLOC_ENABLE"] = "1"

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from mixkit.moe import MoE  # noqa: E402

FULL_GRID = [(T, D, E) for T in (2048, 4096) for D in (256, 512) for E in (8, 64, 256)]
QUICK_GRID = [(512, 128, E) for E in (8, 64)]
SECTIONS = ("train", "infer", "decode", "bf16", "compile")


class DenseFFN(nn.Module):
    """The ideal: one FFN of width k*d_hidden (relu) or a SwiGLU of the same width."""

    def __init__(self, d_model: int, width: int, swiglu: bool = False):
        super().__init__()
        self.w_in = nn.Parameter(torch.randn(d_model, width) * d_model**-0.5)
        self.w_gate = nn.Parameter(torch.randn(d_model, width) * d_model**-0.5) if swiglu else None
        self.w_out = nn.Parameter(torch.randn(width, d_model) * width**-0.5)

    def forward(self, x):
        h = x @ self.w_in
        h = F.silu(x @ self.w_gate) * h if self.w_gate is not None else F.relu(h)
        return h @ self.w_out


def hf_mixtral_block(d_model: int, d_hidden: int, E: int, k: int):
    # transformers is optional (the bench extra): imported only when HF is compared
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    cfg = MixtralConfig(
        hidden_size=d_model, intermediate_size=d_hidden, num_local_experts=E, num_experts_per_tok=k
    )
    cfg._experts_implementation = "grouped_mm"
    block = MixtralSparseMoeBlock(cfg)
    for p in block.parameters():
        nn.init.normal_(p, std=d_model**-0.5)
    return block


def paper_layer(D: int, H: int, E: int, k: int) -> MoE:
    """noisy_topk with a gate that has learned something (its zero init makes every logit tie)."""
    layer = MoE(D, H, E, k=k, router="noisy_topk")
    with torch.no_grad():
        layer.router.w_gate.normal_(0, D**-0.5)
        layer.router.w_noise.normal_(0, D**-0.5)
    return layer


def swiglu_layer(D: int, H: int, E: int, k: int) -> MoE:
    return MoE(D, H, E, k=k, router="topk", expert="swiglu", w_switch=0.0)


def fwd_bwd(module: nn.Module, x: torch.Tensor) -> None:
    module.zero_grad(set_to_none=True)  # what optimizer.zero_grad() does: fresh gradients
    x.grad = None
    y = module(x)
    aux = getattr(module, "aux_loss", None)
    loss = (y.float() ** 2).mean() + (aux if aux is not None else 0.0)
    loss.backward()


def fwd_only(module: nn.Module, x: torch.Tensor) -> None:
    with torch.inference_mode():
        module(x)


def activation_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes of distinct storages autograd saves for backward, parameters and the input excluded."""
    skip = {p.untyped_storage().data_ptr() for p in module.parameters()}
    skip.add(x.untyped_storage().data_ptr())
    seen: dict[int, int] = {}

    def pack(t):
        if isinstance(t, torch.Tensor):
            ptr = t.untyped_storage().data_ptr()
            if ptr not in skip:
                seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fwd_bwd(module, x)
    return sum(seen.values())


CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter  # set from --clock in main()


def time_variants(variants: dict, x: torch.Tensor, repeats: int, step=fwd_bwd) -> dict:
    for module in variants.values():  # warm-up
        step(module, x)
    best = {name: float("inf") for name in variants}
    for _ in range(repeats):
        for name, module in variants.items():
            t0 = clock()
            step(module, x)
            best[name] = min(best[name], clock() - t0)
    return best


def grid_variants(D: int, E: int, k: int, peers: bool, paper: bool = True) -> dict:
    torch.manual_seed(0)
    H = 2 * D
    variants = {}
    if paper:
        variants["ideal"] = DenseFFN(D, k * H)
        variants["mixkit"] = paper_layer(D, H, E, k)
    variants["ideal_swiglu"] = DenseFFN(D, k * H, swiglu=True)
    variants["mixkit_swiglu"] = swiglu_layer(D, H, E, k)
    if peers:
        variants["hf"] = hf_mixtral_block(D, H, E, k)
    return variants


def ratio(t: dict, name: str, base: str) -> str:
    return f"{t[name] / t[base]:.2f}" if name in t else "–"


def train_section(grid, args) -> list[dict]:
    print("\n## train: forward+backward, fp32, dropless, k=2\n")
    head = "| T | d_model | E | ideal ms | noisy_topk ReLU ×ideal | act ×ideal | ideal SwiGLU ms "
    head += "| mixkit SwiGLU ×ideal | HF grouped_mm ×ideal | mixkit / HF | act ×ideal mixkit / HF |"
    print(head + "\n" + "|---:" * 11 + "|")
    rows = []
    for T, D, E in grid:
        variants = grid_variants(D, E, args.k, args.peers)
        x = torch.randn(1, T, D, requires_grad=True)  # (batch, seq, d): the shape HF expects
        t = time_variants(variants, x, args.repeats)
        act = {n: activation_bytes(m, x) for n, m in variants.items()}
        a_sw = act["mixkit_swiglu"] / act["ideal_swiglu"]
        a_hf = f"{act['hf'] / act['ideal_swiglu']:.2f}" if "hf" in act else "–"
        vs_hf = ratio(t, "mixkit_swiglu", "hf") if "hf" in t else "–"
        print(
            f"| {T} | {D} | {E} | {t['ideal'] * 1e3:.1f} | **{ratio(t, 'mixkit', 'ideal')}** | "
            f"{act['mixkit'] / act['ideal']:.2f} | {t['ideal_swiglu'] * 1e3:.1f} | "
            f"**{ratio(t, 'mixkit_swiglu', 'ideal_swiglu')}** | {ratio(t, 'hf', 'ideal_swiglu')} | "
            f"{vs_hf} | {a_sw:.2f} / {a_hf} |",
            flush=True,
        )
        rows.append({"T": T, "D": D, "E": E, "times": t})
    print()
    for name, base, label in (
        ("mixkit", "ideal", "noisy_topk ReLU"),
        ("mixkit_swiglu", "ideal_swiglu", "mixkit SwiGLU"),
        ("hf", "ideal_swiglu", "HF grouped_mm"),
    ):
        print(growth_line(rows, name, base, label))
    weight_floor_table(rows)
    return rows


def weight_floor_table(rows: list[dict]) -> None:
    """SwiGLU expert weights read in forward and backward, gradients written: at the copy's rate."""
    bandwidth = copy_bandwidth_gbs()
    print(f"\nweight-traffic floor, SwiGLU (memory bandwidth, 512 MiB copy: {bandwidth:.1f} GB/s)")
    print(
        "| T | d_model | E | expert weights MB | traffic GB | floor ms | floor ×ideal | "
        "mixkit ×ideal |"
    )
    print("|---:" * 8 + "|")
    for r in rows:
        T, D, E, t = r["T"], r["D"], r["E"], r["times"]
        weights = E * 3 * D * 2 * D * 4  # w_gate, w_in, w_out of d_hidden = 2 d_model, fp32
        floor = 3 * weights / (bandwidth * 1e9)
        print(
            f"| {T} | {D} | {E} | {weights / 1e6:.0f} | {3 * weights / 1e9:.2f} | "
            f"{floor * 1e3:.1f} | {floor / t['ideal_swiglu']:.2f} | "
            f"{t['mixkit_swiglu'] / t['ideal_swiglu']:.2f} |"
        )


def growth_line(rows: list[dict], name: str, base: str, label: str) -> str:
    """×ideal at the largest E over ×ideal at E=8, for each (T, d_model) with both."""
    by_key = {(r["T"], r["D"], r["E"]): r["times"] for r in rows}
    parts = []
    for (T, D, E), t in sorted(by_key.items()):
        big = max(e for (t2, d2, e) in by_key if (t2, d2) == (T, D))
        if E != min(e for (t2, d2, e) in by_key if (t2, d2) == (T, D)) or big == E or name not in t:
            continue
        r_small = t[name] / t[base]
        tb = by_key[(T, D, big)]
        parts.append(f"T={T} d={D}: {tb[name] / tb[base] / r_small:.2f}×")
    return f"growth of ×ideal from E=8 to the largest E, {label}: " + ", ".join(parts)


def infer_section(grid, args) -> None:
    print("\n## infer: forward only under torch.inference_mode(), fp32, SwiGLU\n")
    print(
        "| T | d_model | E | ideal SwiGLU ms | mixkit ×ideal | HF grouped_mm ×ideal | mixkit / HF |"
    )
    print("|---:" * 7 + "|")
    for T, D, E in grid:
        variants = grid_variants(D, E, args.k, args.peers, paper=False)
        x = torch.randn(1, T, D)
        t = time_variants(variants, x, args.repeats, step=fwd_only)
        print(
            f"| {T} | {D} | {E} | {t['ideal_swiglu'] * 1e3:.1f} | "
            f"**{ratio(t, 'mixkit_swiglu', 'ideal_swiglu')}** | {ratio(t, 'hf', 'ideal_swiglu')} | "
            f"{ratio(t, 'mixkit_swiglu', 'hf') if 'hf' in t else '–'} |",
            flush=True,
        )


def copy_bandwidth_gbs(mbytes: int = 512) -> float:
    """Memory bandwidth as a large copy sees it: (bytes read + bytes written) / time, best of 5."""
    src = torch.ones(mbytes << 18)  # mbytes MiB of fp32
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(5):
        t0 = clock()
        dst.copy_(src)
        best = min(best, clock() - t0)
    return 2 * src.numel() * 4 / best / 1e9


def decode_section(args) -> None:
    D, E, H = (128, 16, 256) if args.quick else (512, 64, 1024)
    bandwidth = copy_bandwidth_gbs()
    print(f"\n## decode: inference, E={E}, d_model={D}, d_hidden={H}, k={args.k}, SwiGLU, fp32\n")
    print(f"memory bandwidth (copy of 512 MiB, read + write): {bandwidth:.1f} GB/s\n")
    print(
        "| T | experts chosen | their weights MB | mixkit ms | mixkit GB/s | mixkit ×limit "
        "| HF grouped_mm ms | HF ×limit | bare matmuls ×limit |"
    )
    print("|---:" * 9 + "|")
    torch.manual_seed(0)
    mixkit = swiglu_layer(D, H, E, args.k).eval()
    hf = hf_mixtral_block(D, H, E, args.k).eval() if args.peers else None
    flush = torch.empty(64 << 20)  # 256 MiB written between calls: no expert stays in cache
    for T in (1, 8, 64):
        x = torch.randn(1, T, D)
        best = {}
        fwd_only(mixkit, x)
        bare = bare_matmuls(mixkit, x)  # the chosen experts' matmuls alone: no layer around them
        for name, module in (("mixkit", mixkit), ("hf", hf), ("bare", bare)):
            if module is None:
                continue
            fwd_only(module, x)
            best[name] = float("inf")
            for _ in range(max(args.repeats, 5)):
                flush.fill_(1.0)
                t0 = clock()
                fwd_only(module, x)
                best[name] = min(best[name], clock() - t0)
        chosen = int(mixkit.last_decision.expert_idx_A.unique().numel())
        weight_bytes = chosen * 3 * D * H * 4 + D * E * 4  # the experts chosen + the router
        limit = weight_bytes / (bandwidth * 1e9)  # reading them once at the copy's rate
        hf_ms = f"{best['hf'] * 1e3:.2f} | {best['hf'] / limit:.2f}" if "hf" in best else "– | –"
        print(
            f"| {T} | {chosen} | {weight_bytes / 1e6:.1f} | {best['mixkit'] * 1e3:.2f} | "
            f"{weight_bytes / best['mixkit'] / 1e9:.1f} | **{best['mixkit'] / limit:.2f}** | "
            f"{hf_ms} | {best['bare'] / limit:.2f} |",
            flush=True,
        )


def bare_matmuls(layer: MoE, x: torch.Tensor):
    """The matmuls of the last call's chosen experts, each on its tokens, called directly: the
    least a layer on this thread could take to read those weights."""
    d = layer.last_decision
    ex = layer.experts
    rows = {e: x.reshape(-1, x.shape[-1])[d.token_idx_A[d.expert_idx_A == e]]
            for e in d.expert_idx_A.unique().tolist()}  # fmt: skip

    def run(_x):
        for e, r in rows.items():
            (F.silu(r @ ex.w_gate[e]) * (r @ ex.w_in[e])) @ ex.w_out[e]

    return run


def cpu_has_bf16() -> bool:
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return any(f in flags for f in ("avx512_bf16", "amx_bf16"))


def bf16_section(grid, args) -> None:
    if not cpu_has_bf16():
        print("\n## bf16: skipped, this CPU has no bf16 instructions (avx512_bf16 / amx_bf16)")
        return
    print("\n## bf16: SwiGLU in bfloat16 (this CPU has avx512_bf16 or amx_bf16)\n")
    print(
        "| T | d_model | E | ideal train ms | mixkit train ×ideal | HF train ×ideal "
        "| ideal infer ms | mixkit infer ×ideal | HF infer ×ideal |"
    )
    print("|---:" * 9 + "|")
    for T, D, E in grid:
        variants = grid_variants(D, E, args.k, args.peers, paper=False)
        variants = {n: m.to(torch.bfloat16) for n, m in variants.items()}
        x = torch.randn(1, T, D, dtype=torch.bfloat16, requires_grad=True)
        tr = time_variants(variants, x, args.repeats)
        inf = time_variants(variants, x.detach(), args.repeats, step=fwd_only)
        print(
            f"| {T} | {D} | {E} | {tr['ideal_swiglu'] * 1e3:.1f} | "
            f"**{ratio(tr, 'mixkit_swiglu', 'ideal_swiglu')}** | {ratio(tr, 'hf', 'ideal_swiglu')} | "
            f"{inf['ideal_swiglu'] * 1e3:.1f} | **{ratio(inf, 'mixkit_swiglu', 'ideal_swiglu')}** | "
            f"{ratio(inf, 'hf', 'ideal_swiglu')} |",
            flush=True,
        )


def compile_section(grid, args) -> None:
    print("\n## compile: torch.compile (inductor) of the SwiGLU layer, one training step, fp32\n")
    print("| T | d_model | E | eager ms | compiled ms | compiled / eager | compile s |")
    print("|---:" * 7 + "|")
    for T, D, E in grid:
        torch.manual_seed(0)
        eager = swiglu_layer(D, 2 * D, E, args.k)
        compiled = torch.compile(copy.deepcopy(eager))
        x = torch.randn(1, T, D, requires_grad=True)
        t0 = time.perf_counter()
        fwd_bwd(compiled, x)
        compile_s = time.perf_counter() - t0
        t = time_variants({"eager": eager, "compiled": compiled}, x, args.repeats)
        print(
            f"| {T} | {D} | {E} | {t['eager'] * 1e3:.1f} | {t['compiled'] * 1e3:.1f} | "
            f"**{t['compiled'] / t['eager']:.2f}** | {compile_s:.0f} |",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="small shapes, a smoke run")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per variant (best kept)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("-k", type=int, default=2)
    p.add_argument("--no-peers", dest="peers", action="store_false", help="skip HF transformers")
    p.add_argument("--thp", action="store_true", help="set THP_MEM_ALLOC_ENABLE=1 for torch")
    p.add_argument(
        "--clock",
        choices=CLOCK,
        default="wall",
        help="cpu: the process's CPU time, for a shared machine (use with --threads 1)",
    )
    args = p.parse_args()
    global clock
    clock = CLOCK[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.peers:
        try:
            import transformers  # noqa: F401
        except ImportError:
            print("transformers is not installed (pip install -e '.[bench]'); running without HF")
            args.peers = False
    grid = QUICK_GRID if args.quick else FULL_GRID
    small = grid[:2] if args.quick else [(2048, 256, 8), (2048, 256, 64), (2048, 512, 64)]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, k={args.k}, "
        f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE', 'unset')}, "
        f"best of {args.repeats}, {args.clock} clock, {os.cpu_count()} CPUs"
    )
    if "train" in args.sections:
        train_section(grid, args)
    if "infer" in args.sections:
        infer_section(grid, args)
    if "decode" in args.sections:
        decode_section(args)
    if "bf16" in args.sections:
        bf16_section(small, args)
    if "compile" in args.sections:
        compile_section(small[:1] if not args.quick else small[:1], args)


if __name__ == "__main__":
    main()
