import pytest
import torch

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))

TINY_NET = {"base_channels": 16, "channel_mult": [1, 2], "num_blocks": 1, "dropout": 0.1}


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """Prepared digits train/test splits."""
    from ied.data import prepare
    root = tmp_path_factory.mktemp("digits")
    prepare("digits", "train", root / "train.npz")
    prepare("digits", "test", root / "test.npz")
    return root


def tiny_config(**overrides):
    config = {"dataset": "digits", "rationale": {"family": "l2", "sigma_min": 0.002, "sigma_max": 80},
              "network": dict(TINY_NET), "batch_size": 32, "lr": 2e-3, "ema": 0.99, "seed": 0, "log_every": 10}
    config.update(overrides)
    return config
