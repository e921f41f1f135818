import pytest
import torch

from prunekit.errors import CheckpointError, ConfigError
from prunekit.models import create, load_pretrained


@pytest.mark.parametrize("depth,params", [(20, 269722), (56, 853018)])
def test_resnet_param_counts(depth: int, params: int) -> None:
    model = create(f"resnet{depth}")
    assert sum(p.numel() for p in model.parameters()) == params


def test_option_b_has_projection() -> None:
    model = create("resnet20", option="B")
    assert isinstance(model.layer2[0].shortcut, torch.nn.Sequential)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_unknown_model_suggests() -> None:
    with pytest.raises(ConfigError, match="resnet20"):
        create("resnet2")


def test_pretrained_loads(pretrained_dir) -> None:
    model = load_pretrained(create("resnet20"), pretrained_dir / "resnet20-12fca82f.th")
    assert model.conv1.weight.abs().sum() > 0


def test_pretrained_mismatch_names_key(pretrained_dir) -> None:
    with pytest.raises(CheckpointError, match="layer1.3"):
        load_pretrained(create("resnet20"), pretrained_dir / "resnet56-4bfd9763.th")


def test_corrupt_checkpoint(tmp_path) -> None:
    bad = tmp_path / "bad.th"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.th"):
        load_pretrained(create("resnet20"), bad)
