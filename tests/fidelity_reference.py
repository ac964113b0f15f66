"""torch-fidelity as the test-time reference for `ied.fidelity`: our digits CNN registered as its extractor."""
import numpy as np
import torch

from ied.metrics import DIGITS_EXTRACTOR, DigitsCNN


class UInt8Images(torch.utils.data.Dataset):
    """uint8 C×H×W tensors, as torch-fidelity reads a dataset."""

    def __init__(self, images: np.ndarray):
        self.images = torch.from_numpy(np.ascontiguousarray(images))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i]


def digits_kwargs(weights) -> dict:
    """torch-fidelity's keyword arguments for the digits CNN (registered on first use)."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    class DigitsFeatureExtractor(FeatureExtractorBase):
        def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
            super().__init__(name, features_list)
            self.model = DigitsCNN()
            self.model.load_state_dict(torch.load(feature_extractor_weights_path, weights_only=True)["state_dict"])

        @staticmethod
        def get_provided_features_list():
            return ("features", "logits")

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 1, 8, 8, dtype=torch.uint8)

        def forward(self, x):
            feats, logits = self.model.features(x)
            return tuple({"features": feats, "logits": logits}[name] for name in self.features_list)

    if DIGITS_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(DIGITS_EXTRACTOR, DigitsFeatureExtractor)
    return {"feature_extractor": DIGITS_EXTRACTOR, "feature_extractor_weights_path": str(weights)}


def calculate_metrics(generated: np.ndarray, reference: np.ndarray, **kwargs) -> dict:
    """torch-fidelity's own scores, with the options `ied.metrics.calculate` uses."""
    import torch_fidelity

    return torch_fidelity.calculate_metrics(
        input1=UInt8Images(generated), input2=UInt8Images(reference), fid=True, isc=True, kid=True, prc=True,
        isc_splits=10, kid_subset_size=min(1000, len(generated) // 2, len(reference) // 2), cuda=False,
        verbose=False, save_cpu_ram=True, batch_size=256, **kwargs)
