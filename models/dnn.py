"""The feed-forward network of the course notes, as an ad-click classifier: will this customer click the ad?

Numeric features (already log-transformed and standardized by the data) and one learned embedding per
categorical field are concatenated and go through an MLP, [linear -> (batch norm) -> activation -> dropout]
x num_layers, to ONE logit; the shared recipe applies the sigmoid and binary cross-entropy (log loss).
All fields share ONE embedding table: field f's ids are shifted by `offsets[f]` (the sizes of the fields
before it), so the lookup for a whole batch is a single gather instead of a Python loop over fields.
Left out on purpose: feature crosses (DCN, DeepFM), attention over fields, sparse embedding gradients.
"""
import torch
from torch import nn

from models import check_sizes

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}


class ClickMLP(nn.Module):
    """numeric (B, N) float, categorical (B, F) integer ids -> click logits (B,)."""

    reads = ("tables",)  # the data kinds it is built for (train.py refuses others in one line)

    def __init__(self, num_numeric: int, cardinalities: list[int], hidden_size: int = 128, num_layers: int = 2,
                 embedding_dim: int = 4, dropout: float = 0.2, activation: str = "relu",
                 batch_norm: bool = True) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation={activation!r}; choose one of {sorted(ACTIVATIONS)}")
        check_sizes(hidden_size=hidden_size, embedding_dim=embedding_dim)
        check_sizes(0, num_layers=num_layers)  # 0: a linear model, logistic regression
        sizes = torch.tensor([0, *cardinalities], dtype=torch.long)
        self.register_buffer("offsets", sizes.cumsum(0)[:-1], persistent=False)  # (F,) first row of each field
        self.embedding = nn.Embedding(max(1, int(sizes.sum())), embedding_dim)  # every field's rows, one table
        layers, width = [], num_numeric + len(cardinalities) * embedding_dim
        for _ in range(num_layers):
            layers.append(nn.Linear(width, hidden_size, bias=not batch_norm))  # batch norm has its own shift
            layers += [nn.BatchNorm1d(hidden_size)] if batch_norm else []
            layers += [ACTIVATIONS[activation](), nn.Dropout(dropout)]
            width = hidden_size
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, numeric: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        embedded = self.embedding(categorical + self.offsets)  # (B, F, E): one gather for all fields
        x = torch.cat([numeric, embedded.flatten(1)], dim=1)   # (B, N + F*E)
        return self.mlp(x).squeeze(-1)                          # (B,) logits
