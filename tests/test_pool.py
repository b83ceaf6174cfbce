"""The adaptive pooling that exports size-free (layers/pool.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F


@pytest.mark.parametrize("output_size", [2, 3, 6, (2, 5)])
@pytest.mark.parametrize("hw", [(1, 1), (5, 7), (16, 16), (13, 29)])
def test_pool_with_averaging_matrices_equals_adaptive_avg_pool(output_size, hw):
    from iwin_models.layers.pool import adaptive_avg_pool2d_by_averaging

    x = torch.randn(2, 4, *hw, generator=torch.Generator().manual_seed(hw[0] * hw[1]))
    x = x.contiguous(memory_format=torch.channels_last)  # Iwin's features are channels-last views
    torch.testing.assert_close(adaptive_avg_pool2d_by_averaging(x, output_size), F.adaptive_avg_pool2d(x, output_size),
                               rtol=1e-6, atol=1e-6)


def _targets(program) -> set[str]:
    return {str(n.target) for n in program.graph.nodes if n.op == "call_function"}


def test_pool_is_recorded_with_averaging_matrices_in_its_export_form_only():
    """Eager and plain export: PyTorch's kernel; the export form (set by ``export_forms`` on a copy of the model):
    the averaging matrices (ONNX would fix GatherND indices to the traced size)."""
    from iwin_models.interop.export import export_forms
    from iwin_models.layers.pool import AdaptiveAvgPool2d

    pool, x = AdaptiveAvgPool2d(3), torch.randn(2, 4, 10, 11)
    assert torch.equal(pool(x), F.adaptive_avg_pool2d(x, 3))
    assert any("adaptive" in t for t in _targets(torch.export.export(pool, (x,))))
    exported = export_forms(pool)
    assert exported.export_form and not pool.export_form  # a copy: the module itself is untouched
    program = torch.export.export(exported, (x,))
    assert not any("adaptive" in t for t in _targets(program)), _targets(program)
    torch.testing.assert_close(program.module()(x), pool(x))
