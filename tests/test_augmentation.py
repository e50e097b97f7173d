"""The CNN's training-time random translation: per-image shifts within the bound while training, the
identity in eval mode, the state-dict keys of a plain ``nn.Sequential``, and absent from the ONNX graph."""

from __future__ import annotations

import onnx
import pytest
import torch

from trainforge.plugins.layers import TranslatedSequential, random_translation
from trainforge.plugins.models import build_cnn


def _dot_images(n: int) -> torch.Tensor:
    """``(n, 1, 8, 8)`` zeros with a single 1.0 at row 3, column 4: its centre of mass shows the shift."""
    x = torch.zeros(n, 1, 8, 8)
    x[:, 0, 3, 4] = 1.0
    return x


def _centre_of_mass(x: torch.Tensor) -> torch.Tensor:
    """``(N, 2)`` (row, column) centre of mass of each ``(1, H, W)`` image."""
    rows = torch.arange(x.shape[2], dtype=x.dtype).view(1, -1, 1)
    cols = torch.arange(x.shape[3], dtype=x.dtype).view(1, 1, -1)
    img = x[:, 0]
    mass = img.sum(dim=(1, 2))
    return torch.stack([(img * rows).sum(dim=(1, 2)) / mass, (img * cols).sum(dim=(1, 2)) / mass], dim=1)


def test_each_image_is_shifted_by_its_own_offset_within_the_bound():
    torch.manual_seed(0)
    out = random_translation(_dot_images(256), 0.125)  # at most 1 pixel of 8
    shift = _centre_of_mass(out) - torch.tensor([3.0, 4.0])
    assert shift.abs().max() <= 1.0 + 1e-5
    assert shift.abs().max() > 0.9  # the full range is used ...
    assert shift.std(dim=0).min() > 0.4  # ... independently per image (uniform on [-1, 1]: std 0.58)
    assert torch.allclose(out.sum(dim=(1, 2, 3)), torch.ones(256), atol=1e-5)  # a shift, not a rescale


def test_shift_only_while_training_and_not_at_zero():
    torch.manual_seed(0)
    x = torch.randn(16, 1, 8, 8)
    net = TranslatedSequential(0.2, torch.nn.Identity())
    assert not torch.allclose(net.train()(x), x)
    assert torch.equal(net.eval()(x), x)
    assert torch.equal(TranslatedSequential(0.0, torch.nn.Identity()).train()(x), x)


@pytest.mark.parametrize("bad", [-0.1, 0.5, 2.0])
def test_out_of_range_translate_is_refused(bad):
    with pytest.raises(ValueError, match="translate must be in"):
        TranslatedSequential(bad, torch.nn.Identity())


def test_cnn_state_dict_keys_are_those_of_a_plain_sequential():
    """Checkpoints written before the CNN had its translation (a plain ``nn.Sequential``) still load."""
    torch.manual_seed(0)
    cnn = build_cnn((1, 8, 8), 10)
    plain = torch.nn.Sequential(*cnn)
    assert list(cnn.state_dict()) == list(plain.state_dict())
    cnn.load_state_dict(plain.state_dict())
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(cnn.eval()(x), plain.eval()(x))


def test_cnn_onnx_graph_has_no_augmentation(digits_run):
    """The digits CNN trains with random translation (its default); the exported graph must not resample."""
    assert build_cnn((1, 8, 8), 10).translate == 0.125
    graph = onnx.load(digits_run.result["onnx_path"]).graph
    ops = {node.op_type for node in graph.node}
    assert "Conv" in ops
    assert not ops & {"GridSample", "AffineGrid", "RandomUniform", "RandomUniformLike"}
