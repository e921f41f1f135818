"""EIE storage of LeNet-300-100 on MNIST: dense -> magnitude pruning -> 4-bit weight sharing.

Trains LeNet-300-100 dense, prunes each layer by weight magnitude to Han et al.'s per-layer
densities (8 % / 9 % / 26 %, ~92 % overall) in ``--prune-rounds`` steps with masked
fine-tuning, shares each layer's weights through a 2**bits k-means codebook (+ codebook
fine-tuning), packs every layer in the EIE format and reports bytes and accuracy at each stage.
Writes ``benchmarks/results/eie.md``.

Command (2-core shared CPU, 1 thread, ~3 min):
    python benchmarks/eie_lenet.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

from prunekit.allocation import PerLayer
from prunekit.data import mnist_loaders
from prunekit.granularity import Element
from prunekit.importance import Magnitude
from prunekit.io import atomic_write_text
from prunekit.models import create
from prunekit.pruning import prune
from prunekit.sparse.formats import (
    CSRMatrix,
    EIEMatrix,
    SharedWeightLinear,
    share_linear_layers,
)
from prunekit.targets import select
from prunekit.train import TrainConfig, evaluate, fit
from prunekit.train.codebook import finetune_codebook

# Han et al. (NeurIPS 2015), Table 2: LeNet-300-100 keeps 8 % / 9 % / 26 % of fc1 / fc2 / fc3.
SPARSITY = {"fc1": 0.92, "fc2": 0.91, "fc3": 0.74}


def log(msg: str) -> None:
    print(msg, flush=True)


def top1(model: nn.Module, loader) -> float:
    return evaluate(model, loader).top1


def test_loss(model: nn.Module, loader) -> float:
    return evaluate(model, loader).loss


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data", help="folder holding mnist/")
    ap.add_argument("--dense-epochs", type=int, default=4)
    ap.add_argument("--prune-rounds", type=int, default=3)
    ap.add_argument("--finetune-epochs", type=int, default=3, help="masked fine-tuning epochs per round")
    ap.add_argument("--codebook-epochs", type=int, default=1)
    ap.add_argument("--bits", type=int, default=4, help="codebook index bits (2**bits shared values, one is 0)")
    ap.add_argument("--pes", type=int, default=64, help="PEs for the row-interleaved EIE variant (EIE has 64)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="benchmarks/results/eie.md")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    t_start = time.perf_counter()
    train_loader, test_loader = mnist_loaders(Path(args.data) / "mnist", batch_size=128)

    # 1. dense
    model = create("lenet300_100")
    fit(model, train_loader, test_loader,
        TrainConfig(epochs=args.dense_epochs, lr=0.05, weight_decay=1e-4, schedule="cosine", progress=False, seed=0))
    acc_dense, loss_dense = top1(model, test_loader), test_loss(model, test_loader)
    log(f"dense top-1 {acc_dense:.4f}")
    dense_bytes = {n: m.weight.numel() * 4 for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    bias_bytes = sum(m.bias.numel() * 4 for m in model.modules() if isinstance(m, nn.Linear))

    # 2. iterative magnitude pruning with masked fine-tuning
    for r in range(1, args.prune_rounds + 1):
        frac = r / args.prune_rounds
        ratios = {k: v * frac for k, v in SPARSITY.items()}
        masks = prune(model, select(model), Magnitude(), Element(), PerLayer(ratios))
        acc_cut = top1(model, test_loader)
        fit(model, train_loader, test_loader,
            TrainConfig(epochs=args.finetune_epochs, lr=0.01, weight_decay=1e-4, schedule="cosine", progress=False, seed=0))
        log(f"round {r}: sparsity {masks.sparsity():.4f}, top-1 after cut {acc_cut:.4f}, "
            f"after fine-tune {top1(model, test_loader):.4f}")
        masks.make_permanent(model)
    acc_pruned, loss_pruned = top1(model, test_loader), test_loss(model, test_loader)
    nnz = {n: int((m.weight != 0).sum()) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    csr = {n: CSRMatrix.pack(m.weight.detach()) for n, m in model.named_modules() if isinstance(m, nn.Linear)}

    # 3. weight sharing, before and after codebook fine-tuning
    share_linear_layers(model, bits=args.bits)
    acc_shared, loss_shared = top1(model, test_loader), test_loss(model, test_loader)
    finetune_codebook(model, train_loader, epochs=args.codebook_epochs, lr=1e-4)
    acc_tuned, loss_tuned = top1(model, test_loader), test_loss(model, test_loader)
    log(f"pruned {acc_pruned:.4f}, shared {acc_shared:.4f}, codebook-tuned {acc_tuned:.4f} "
        f"(test loss {loss_shared:.4f} -> {loss_tuned:.4f})")

    # 4. EIE packing: exact, and the model rebuilt from the packed layers scores the same
    shared = {n: m for n, m in model.named_modules() if isinstance(m, SharedWeightLinear)}
    eie4, eie5, eie_pe = {}, {}, {}
    rebuilt = create("lenet300_100")
    for name, layer in shared.items():
        w = layer.weight().detach()
        eie4[name] = EIEMatrix.pack(w, bits=args.bits, index_bits=4, codebook=layer.codebook().detach())
        eie5[name] = EIEMatrix.pack(w, bits=args.bits, index_bits=5, codebook=layer.codebook().detach())
        eie_pe[name] = EIEMatrix.pack(w, bits=args.bits, index_bits=4, codebook=layer.codebook().detach(),
                                      num_pes=args.pes)
        assert all(torch.equal(e[name].unpack(), w) for e in (eie4, eie5, eie_pe))
        target = rebuilt.get_submodule(name)
        with torch.no_grad():
            target.weight.copy_(eie4[name].unpack())
            target.bias.copy_(layer.bias)
    acc_eie = top1(rebuilt, test_loader)
    seconds = time.perf_counter() - t_start
    log(f"EIE-unpacked model top-1 {acc_eie:.4f}; total {seconds:.0f}s")

    # 5. report
    rows = []
    for name in shared:
        e4, e5, ep = eie4[name], eie5[name], eie_pe[name]
        load = ep.pe_entries().double()
        rows.append(f"| {name} | {tuple(e4.matrix_shape)} | {nnz[name] / (dense_bytes[name] // 4):.2%} | "
                    f"{dense_bytes[name]:,} | {csr[name].nbytes():,} | {e4.num_entries - e4.nnz:,} | {e4.nbytes():,} | "
                    f"{dense_bytes[name] / e4.nbytes():.1f}x | {e4.huffman_nbytes():,} | {e5.num_entries - e5.nnz:,} | {e5.nbytes():,} | "
                    f"{ep.nbytes():,} | {float(load.max() / load.mean()):.2f} |")
    tot_dense, tot_csr = sum(dense_bytes.values()), sum(c.nbytes() for c in csr.values())
    tot4, tot5 = sum(e.nbytes() for e in eie4.values()), sum(e.nbytes() for e in eie5.values())
    tot_pe = sum(e.nbytes() for e in eie_pe.values())
    tot_huff = sum(e.huffman_nbytes() for e in eie4.values())
    tot_nnz, tot_w = sum(nnz.values()), sum(dense_bytes.values()) // 4
    cmd = "python benchmarks/eie_lenet.py " + " ".join(sys.argv[1:])
    text = f"""# EIE format on LeNet-300-100 (MNIST)

Command: `{cmd.strip()}` (defaults: {args.dense_epochs} dense epochs, {args.prune_rounds} pruning rounds x
{args.finetune_epochs} masked fine-tuning epochs, {args.codebook_epochs} codebook epoch, {args.bits}-bit codebook).
Machine: {platform.machine()} CPU shared with other jobs, 2 cores, torch {torch.__version__}, {args.threads} thread(s);
wall time {seconds:.0f} s for the whole run. Accuracy is top-1 on the 10,000 MNIST test images, all from this run.

Pipeline: dense training -> magnitude pruning to Han et al.'s per-layer sparsities
({", ".join(f"{k} {v:.0%}" for k, v in SPARSITY.items())}) in {args.prune_rounds} rounds with masked fine-tuning
(`prunekit.pruning.prune` + `Masks`) -> {args.bits}-bit k-means weight sharing per layer (linear init, code 0
reserved for 0.0, so {2**args.bits - 1} learned values) -> centroid fine-tuning (summed cluster gradients, Adam
lr 1e-4) -> `EIEMatrix.pack` per layer. The model rebuilt from the unpacked EIE layers is checked to be
bit-identical to the shared model.

## Accuracy

| stage | top-1 | test loss |
| --- | --- | --- |
| dense ({tot_w:,} weights) | {acc_dense:.2%} | {loss_dense:.4f} |
| pruned + fine-tuned ({tot_nnz / tot_w:.2%} of weights kept) | {acc_pruned:.2%} | {loss_pruned:.4f} |
| + {args.bits}-bit weight sharing | {acc_shared:.2%} | {loss_shared:.4f} |
| + codebook fine-tuning | {acc_tuned:.2%} | {loss_tuned:.4f} |
| model rebuilt from the EIE-packed layers | {acc_eie:.2%} | |

## Bytes (weights; biases, {bias_bytes:,} B in fp32, are not in the formats)

Padding = EIE padding entries (a gap of more than 2^index_bits - 1 zeros in a column).

| layer | shape | density | dense fp32 B | CSR fp32 B | pad (4-bit idx) | EIE 4-bit idx B | ratio | + Huffman (est.) B | pad (5-bit idx) | EIE 5-bit idx B | EIE {args.pes} PEs B | PE load max/mean |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(rows)}
| **total** | | {tot_nnz / tot_w:.2%} | {tot_dense:,} | {tot_csr:,} | | {tot4:,} | **{tot_dense / tot4:.1f}x** | {tot_huff:,} | | {tot5:,} | {tot_pe:,} | |

- Compression vs dense fp32, weights only: **{tot_dense / tot4:.1f}x** with 4-bit relative indices (EIE),
  {tot_dense / tot5:.1f}x with 5-bit indices (Deep Compression's choice for FC layers); CSR with fp32 values:
  {tot_dense / tot_csr:.1f}x.
- With the rows interleaved over {args.pes} PEs as in the EIE chip (`num_pes={args.pes}`), each PE keeps its own
  column pointers and counts gaps in its local rows: fewer padding entries but {args.pes}x the pointers, so
  {tot_dense / tot_pe:.1f}x for these small layers; "PE load max/mean" is the entry imbalance between PEs.
- Including the fp32 biases on both sides: {(tot_dense + bias_bytes) / (tot4 + bias_bytes):.1f}x.
- Deep Compression (Han et al., ICLR 2016) reports about 40x for LeNet-300-100 *with* Huffman coding of the
  indices and codes; the stored format uses none (fixed {args.bits}-bit codes and fixed-width indices). As an
  estimate of that last stage, `EIEMatrix.huffman_nbytes()` (optimal prefix code per stream, code tables not
  counted) gives {tot_huff:,} B, i.e. {tot_dense / tot_huff:.1f}x.
- EIE byte count = packed relative indices + packed codes + column pointers (smallest int type holding the
  entry count) + the fp32 codebook of {2**args.bits} entries per layer.
"""
    atomic_write_text(args.out, text)
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
