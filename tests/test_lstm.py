"""The LSTM text encoder baseline: shapes, padding invariance, pooled = final states."""

import pytest
import torch

from multimodaltransformer.modalities import LSTMTextConfig, LSTMTextEncoder


@pytest.mark.parametrize("bidirectional", [True, False])
def test_padded_rows_equal_rows_alone(bidirectional):
    torch.manual_seed(0)
    enc = LSTMTextEncoder(LSTMTextConfig(vocab_size=50, dim=16, hidden=12, layers=2, bidirectional=bidirectional)).eval()
    ids = torch.randint(1, 50, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    out = enc(ids, mask)
    width = 24 if bidirectional else 12
    assert out.last_hidden_state.shape == (2, 7, width) and out.pooler_output.shape == (2, width)
    alone = enc(ids[1:, :4])
    torch.testing.assert_close(out.last_hidden_state[1, :4], alone.last_hidden_state[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.pooler_output[1], alone.pooler_output[0], atol=1e-6, rtol=1e-5)
    assert out.last_hidden_state[1, 4:].abs().max() == 0  # padding carries no features


def test_unidirectional_pooled_is_the_last_real_step():
    torch.manual_seed(0)
    enc = LSTMTextEncoder(LSTMTextConfig(vocab_size=30, dim=8, hidden=6, bidirectional=False)).eval()
    ids = torch.randint(1, 30, (3, 5))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]])
    out = enc(ids, mask)
    last = out.last_hidden_state[torch.arange(3), mask.sum(-1) - 1]
    torch.testing.assert_close(out.pooler_output, last)
