"""Hugging Face BERT and GPT-2 (tiny configs, random weights): head and MLP-neuron pruning."""

from __future__ import annotations

import pytest
import torch

from prunekit.allocation import Uniform
from prunekit.checkpoint import load_pruned, save_pruned
from prunekit.structure import AxisRef, DependencyGraph, PruningPlan, prune_channels

transformers = pytest.importorskip(
    "transformers", reason="transformers not installed (pip install 'prunekit[hf]')"
)
torch.set_num_threads(1)
IDS = {"input_ids": torch.randint(0, 100, (2, 7), generator=torch.Generator().manual_seed(0))}


def bert() -> torch.nn.Module:
    cfg = transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=16,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.BertModel(cfg).eval()


def gpt2() -> torch.nn.Module:
    cfg = transformers.GPT2Config(
        vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=16, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def test_bert_units_are_heads_and_intermediate_neurons():
    g = DependencyGraph.build(bert(), IDS)
    head = next(
        u for u in g.units if 1 in u.slots.get(AxisRef("encoder.layer.0.attention.self", "heads"), ())
    )
    rows = tuple(range(8, 16))  # head 1 of 4, head size 8
    for p in ("query", "key", "value"):
        assert head.slots[AxisRef(f"encoder.layer.0.attention.self.{p}", "out")] == rows
    assert head.slots[AxisRef("encoder.layer.0.attention.output.dense", "in")] == rows
    assert sum(u.prunable for u in g.units) == 2 * (4 + 48)


def test_gpt2_head_owns_its_q_k_v_columns_of_c_attn():
    g = DependencyGraph.build(gpt2(), IDS)
    head = next(u for u in g.units if 2 in u.slots.get(AxisRef("transformer.h.1.attn", "heads"), ()))
    qkv = tuple(range(16, 24)) + tuple(range(48, 56)) + tuple(range(80, 88))
    assert head.slots[AxisRef("transformer.h.1.attn.c_attn", "out")] == qkv
    assert head.slots[AxisRef("transformer.h.1.attn.c_proj", "in")] == tuple(range(16, 24))


@pytest.mark.parametrize(("build", "cls"), [(bert, "BertModel"), (gpt2, "GPT2LMHeadModel")])
def test_prune_heads_and_neurons_equals_masked_and_replays(build, cls, tmp_path):
    model = build()
    small, plan, report = prune_channels(model, IDS, Uniform(0.5))  # verifies
    assert report.verified is not None and report.params_after < report.params_before
    if cls == "BertModel":
        att = small.encoder.layer[0].attention.self
        assert (att.num_attention_heads, att.all_head_size, att.query.out_features) == (2, 16, 16)
        assert small.encoder.layer[0].intermediate.dense.out_features == 24
    else:
        att = small.transformer.h[0].attn
        assert (att.num_heads, att.split_size, att.c_attn.nf, att.c_proj.nx) == (2, 16, 48, 16)
        assert small.transformer.h[0].mlp.c_fc.nf == 64
    fresh = PruningPlan.from_json(plan.to_json()).apply(build())
    fresh.load_state_dict(small.state_dict())
    with torch.no_grad():
        a, b = small(**IDS), fresh(**IDS)
    torch.testing.assert_close(a.last_hidden_state if cls == "BertModel" else a.logits,
                               b.last_hidden_state if cls == "BertModel" else b.logits)  # fmt: skip
    path = save_pruned(tmp_path / "m.pt", f"hf:{cls}", model.config.to_dict(), plan, small)
    again, ckpt = load_pruned(path)
    for (k, x), y in zip(again.state_dict().items(), small.state_dict().values()):
        assert torch.equal(x, y), k
