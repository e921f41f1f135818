"""Calibration with the batches users have: tensors, (inputs, labels) pairs, dicts and Hugging Face
BatchEncoding (keyword arguments, so attention masks are honoured), and losses on non-logit outputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError, DataError
from prunekit.importance import APoZ, MeanActivation, Taylor
from prunekit.targets import select

transformers = pytest.importorskip("transformers", reason="transformers not installed (pip install 'prunekit[hf]')")


def _bert() -> nn.Module:
    cfg = transformers.BertConfig(
        vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=16, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(cfg)


def _padded_batches(n: int = 2) -> list:
    """Tokenizer-style batches: right padding with id 0 and attention_mask 0 after each length."""
    gen = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        lengths = torch.tensor([9, 4, 6])
        ids = torch.randint(1, 60, (3, 10), generator=gen)
        mask = (torch.arange(10)[None, :] < lengths[:, None]).long()
        ids = ids * mask  # pad id 0
        out.append(transformers.BatchEncoding({
            "input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
            "labels": torch.randint(0, 3, (3,), generator=gen),
        }))
    return out


def _targets(model: nn.Module) -> list:
    return select(model, types=(nn.Linear,), include=["bert.encoder.*"])


def test_bert_taylor_from_batch_encoding_honours_the_attention_mask() -> None:
    model = _bert()
    batches = _padded_batches()
    targets = _targets(model)
    imp = Taylor().calibrate(model, batches, len(batches), targets)
    # by hand: the same model run with the same attention mask, the same loss
    expected = {t.name: torch.zeros_like(t.weight) for t in targets}
    model.eval()
    for b in batches:
        model.zero_grad()
        out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"])
        nn.functional.cross_entropy(out.logits, b["labels"]).backward()
        for t in targets:
            expected[t.name] += (t.weight.detach() * t.weight.grad).abs()
    for t in targets:
        assert torch.allclose(imp.scores(t), expected[t.name] / len(batches), rtol=1e-4, atol=1e-8), t.name
    # and the mask matters: attending to the padding gives different scores
    unmasked = [transformers.BatchEncoding({**b, "attention_mask": torch.ones_like(b["attention_mask"])})
                for b in batches]
    other = Taylor().calibrate(model, unmasked, len(batches), targets)
    assert not torch.allclose(other.scores(targets[0]), imp.scores(targets[0]))


@pytest.mark.parametrize("make", [APoZ, MeanActivation], ids=["apoz", "mean"])
def test_activation_criteria_take_dict_batches(make) -> None:
    model = _bert()
    targets = _targets(model)[:2]
    plain = [dict(b.items()) for b in _padded_batches()]
    imp = make().calibrate(model, plain, 2, targets)
    assert imp.scores(targets[0]).shape == targets[0].weight.shape


def test_loss_on_non_logit_outputs_needs_a_loss_fn() -> None:
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            y = self.fc(x)
            return {"scores": y, "aux": y.sum()}

    model = TwoHeads()
    batches = [(torch.randn(5, 4), torch.randint(0, 3, (5,)))]
    with pytest.raises(ConfigError, match="returned a dict, not logits; pass loss_fn"):
        Taylor().calibrate(model, batches, 1, select(model))
    imp = Taylor(loss_fn=lambda out, y: nn.functional.cross_entropy(out["scores"], y)).calibrate(
        model, batches, 1, select(model))
    assert bool((imp.scores(select(model)[0]) > 0).any())
    with pytest.raises(DataError, match="cannot read a calibration batch of type str"):
        Taylor().calibrate(model, ["text"], 1, select(model))


def test_prune_channels_calibrates_a_data_criterion_from_its_loader() -> None:
    from prunekit.allocation import Uniform
    from prunekit.structure import prune_channels

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4)).eval()
    data = [(torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,))) for _ in range(2)]
    small, plan, _ = prune_channels(model, torch.zeros(1, 3, 8, 8), Uniform(0.5), "taylor", calibration=data)
    assert small[0].out_channels == 4 and "Taylor" in plan.meta["importance"]
    with pytest.raises(ConfigError, match="'taylor' needs calibration data"):
        prune_channels(model, torch.zeros(1, 3, 8, 8), Uniform(0.5), "taylor")


def test_params_target_restricted_to_the_encoder() -> None:
    from prunekit.allocation import Global
    from prunekit.structure import prune_channels

    model = _bert().eval()
    ids = {"input_ids": torch.randint(1, 60, (1, 8), generator=torch.Generator().manual_seed(0))}
    small, _, report = prune_channels(model, ids, Global(0.3), target="params", within=["bert.encoder*"])
    enc_before, enc_after = report.scoped["params"]
    assert 0.3 <= report.reached["params"] < 0.4 and enc_after / enc_before == pytest.approx(
        1 - report.reached["params"])
    whole = 1 - report.params_after / report.params_before
    assert whole < report.reached["params"]  # the embeddings and the head are not counted, and stay
    with pytest.raises(ConfigError, match="within 'decoder.*' matches no prunable layer"):
        prune_channels(model, ids, Global(0.3), target="params", within=["decoder.*"])
