"""LSTM reading the image one row at a time (2D only): sequence length H, features C*W per step.

Classification uses the final hidden state h_n of the last layer (both directions concatenated
when bidirectional), not the mean over time. Why: h_n is the one summary that has seen every row
-- for a bidirectional LSTM the forward state at the last row and the backward state at the first
row, whereas `output[:, -1]` would give a backward half that saw one row. A mean over time weights
every row equally (background rows included) and bypasses the gates that decide what to keep;
the last state is also the common choice for row-by-row MNIST LSTMs.
"""

from __future__ import annotations

from torch import Tensor, nn

from bench.models import register_model
from bench.models.common import as_int, check_dropout, check_inputs


class RowLSTM(nn.Module):
    def __init__(
        self,
        in_channels: int,
        image_size: int,
        n_classes: int,
        hidden: int,
        layers: int,
        bidirectional: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        self.directions = 2 if bidirectional else 1
        self.lstm = nn.LSTM(
            in_channels * image_size,
            hidden,
            num_layers=layers,
            batch_first=True,
            dropout=dropout if layers > 1 else 0.0,
            bidirectional=bidirectional,
        )
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden * self.directions, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        rows = x.permute(0, 2, 1, 3).reshape(n, h, c * w)  # step t = row t, all channels
        _, (h_n, _) = self.lstm(rows)  # h_n: (layers * directions, N, hidden)
        last = h_n[-self.directions :].transpose(0, 1).reshape(n, -1)
        return self.fc(self.dropout(last))


@register_model
def lstm(
    in_channels: int,
    n_classes: int,
    image_size: int,
    *,
    hidden: int = 128,
    layers: int = 1,
    bidirectional: bool = False,
    dropout: float = 0.0,
) -> nn.Module:
    """Row-by-row LSTM; dropout acts between stacked layers and before the classifier."""
    check_inputs("lstm", in_channels, n_classes, image_size)
    hidden = as_int("lstm", "hidden", hidden, lo=1)
    layers = as_int("lstm", "layers", layers, lo=1)
    dropout = check_dropout("lstm", dropout)
    return RowLSTM(in_channels, image_size, n_classes, hidden, layers, bool(bidirectional), dropout)
