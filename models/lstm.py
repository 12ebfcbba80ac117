"""LSTM networks: a character-level language model and a sequence classifier, trained by the one shared recipe.

`model=lstm` builds `build(**net_kwargs, **knobs)`, and what the data provides picks the network:
  a vocabulary (`vocab_size`, text corpora)   -> CharLM: embedding -> LSTM -> linear, logits at every step (task "lm")
  classes and an image size (ImageDataModule) -> SequenceClassifier: the image read row by row (H steps of C*W
                                                 features) -> LSTM -> linear on the final state (task "multiclass")
Two small classes rather than one with optional front-ends and heads: each reads top to bottom with no
branches on the task, each has only the arguments it uses, and the one fact that decides (what the data is) is
read in one place, `build`. Both share the knob names hidden_size, num_layers, dropout.
Left out on purpose: bidirectional layers (a language model must not see the next character), attention,
and layer norm inside the cell (nn.LSTM keeps cuDNN's fused kernel on a GPU and oneDNN's on the CPU).
"""
import math

import torch
from torch import Tensor, nn
from torch.utils import flop_counter

from models import check_sizes

State = tuple[Tensor, Tensor]  # (h, c), each (num_layers, B, hidden_size)


def recurrent_flops(input_shape, weight_shapes) -> int:
    """FLOPs (2 per multiply-add) of the matrix products of a fused LSTM/GRU/RNN kernel: each step of the input
    (B*T positions, or a packed sequence's rows) meets each layer's W_ih and W_hh once: 2 * B*T * 4h * (in + h) a
    layer for an LSTM. torch's FlopCounterMode, which fills the FLOPs column of Lightning's model summary, counts
    the products of convolutions and linear layers but not these kernels (its LSTM rows read 0)."""
    return 2 * math.prod(input_shape[:-1]) * sum(math.prod(w) for w in weight_shapes if len(w) == 2)


def _counted(weights_of):
    def formula(input_shape, *args, **kwargs) -> int:
        try:
            return recurrent_flops(input_shape, weights_of(*args))
        except Exception:  # a signature this torch does not have: the summary's FLOPs are not worth a failed run
            return 0
    return formula


# oneDNN's CPU kernel runs one layer a call (input, w_ih, w_hh, b_ih, b_hh, ...); cuDNN's all layers (input, [weights])
for _op, _weights in ((torch.ops.aten.mkldnn_rnn_layer, lambda *args: args[:2]),
                      (torch.ops.aten._cudnn_rnn, lambda weights, *_: weights)):
    if _op not in flop_counter.flop_registry:
        flop_counter.register_flop_formula(_op)(_counted(_weights))


def recur(lstm: nn.LSTM, x: Tensor | nn.utils.rnn.PackedSequence, state: State | None = None):
    """`lstm(x, state)`, in float32 under autocast unless that is CUDA's float16 (`trainer.precision=16-mixed`, whose
    gradient scaler keeps small gradients representable). Under bf16 autocast (`bf16-mixed`) cuDNN's LSTM would
    run in float16 all the same (autocast casts its inputs and weights to float16 whatever the autocast dtype),
    with no gradient scaler: gradients below 6e-5 lose precision or vanish. On a CPU, oneDNN has a bf16 LSTM only
    on CPUs with AVX512-BF16 and fails on the others. The head's matmul runs in bf16 (autocast casts no embedding
    lookup: it stays float32)."""
    device = (x.data if isinstance(x, nn.utils.rnn.PackedSequence) else x).device.type
    cuda_float16 = device == "cuda" and torch.get_autocast_dtype(device) == torch.float16
    if not torch.is_autocast_enabled(device) or cuda_float16:
        return lstm(x, state)
    with torch.autocast(device, enabled=False):
        return lstm(x.float(), state and tuple(s.float() for s in state))


def open_forget_gates(lstm: nn.LSTM, bias: float = 1.0) -> nn.LSTM:
    """Start every layer's forget gate at sigmoid(bias) (0.73 for 1) instead of PyTorch's ~0.5: along the cell
    state each step back multiplies the gradient by the forget gate, so at 0.5 it vanishes nearly as fast as a
    plain RNN's (notebooks/concepts.ipynb plots it). Gers et al. 2000; Jozefowicz et al. 2015 found 1 a good default
    for their tasks. Not the default here: on tinyshakespeare (2x256, random windows of 128, each from a zero state) it
    learned slower, validation loss 2.04 / 1.83 / 1.79 after 245 / 490 / 750 steps against 1.92 / 1.69 / 1.64 (the
    last after 724 steps, where max_time stopped that run; `trainer.max_steps=750`, 2026-11-30)."""
    rows = slice(lstm.hidden_size, 2 * lstm.hidden_size)  # the f block of PyTorch's i, f, g, o rows
    with torch.no_grad():
        for layer in range(lstm.num_layers):
            getattr(lstm, f"bias_ih_l{layer}")[rows] = bias  # the two biases add up: b_ih + b_hh is the gate's b
            getattr(lstm, f"bias_hh_l{layer}")[rows] = 0.0
    return lstm


class CharLM(nn.Module):
    """Token ids (B, T) -> next-token logits (B, T, vocab_size)."""

    def __init__(self, vocab_size: int, embedding_dim: int = 64, hidden_size: int = 256, num_layers: int = 2,
                 dropout: float = 0.1, tie_weights: bool = False, forget_bias: float | None = None) -> None:
        super().__init__()
        check_sizes(embedding_dim=embedding_dim, hidden_size=hidden_size, num_layers=num_layers)
        if tie_weights and embedding_dim != hidden_size:
            raise ValueError(f"tie_weights needs embedding_dim == hidden_size; got {embedding_dim} and {hidden_size}")
        self.embedding = nn.Embedding(vocab_size, embedding_dim)
        # nn.LSTM applies `dropout` between stacked layers only; self.dropout covers its input and output.
        self.lstm = nn.LSTM(embedding_dim, hidden_size, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        if forget_bias is not None:
            open_forget_gates(self.lstm, forget_bias)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, vocab_size)
        if tie_weights:  # one (vocab, hidden) matrix both reads and writes characters: fewer parameters
            self.head.weight = self.embedding.weight

    def forward(self, tokens: Tensor) -> Tensor:
        return self.step(tokens)[0]  # (B, T, vocab_size), every window from a zero state

    def step(self, tokens: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        x = self.dropout(self.embedding(tokens))  # (B, T, embedding_dim)
        x, state = recur(self.lstm, x, state)  # (B, T, hidden_size); state after the last step
        return self.head(self.dropout(x)), state  # (B, T, vocab_size)

    @torch.no_grad()
    def generate(self, prompt: Tensor, length: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None, never: tuple[int, ...] = ()) -> Tensor:
        """prompt ids (T0,) -> (T0 + length,): the prompt, then `length` sampled ids. Call in eval mode.
        temperature 0 takes the most likely character; top_k samples among the k most likely only; ids in
        `never` are never drawn (the unknown-character id, which stands for no character in particular)."""
        logits, state = self.step(prompt[None])  # the whole prompt in one call; (1, T0, V)
        out = [prompt]
        for _ in range(length):
            logits = logits[:, -1]  # (1, V): scores for the next character
            if never:
                logits = logits.index_fill(-1, torch.tensor(never, device=logits.device), float("-inf"))
            if temperature == 0:
                token = logits.argmax(-1, keepdim=True)  # (1, 1)
            else:
                # < 1 sharpens the distribution, > 1 flattens it. From the max down, and within the dtype's normal
                # numbers (5e-324 is 0 in float32, 1e300 inf): a tiny temperature gives -inf and 0 logits, a huge one
                # all 0 (uniform) but -inf for the characters never drawn, never NaN.
                dtype = torch.finfo(logits.dtype)
                logits = (logits - logits.amax(-1, keepdim=True)) / min(max(temperature, dtype.tiny), dtype.max)
                if top_k:
                    kth = logits.topk(min(top_k, logits.shape[-1])).values[:, -1:]  # (1, 1)
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                token = torch.multinomial(logits.softmax(-1), 1, generator=generator)  # (1, 1)
            out.append(token[0])
            logits, state = self.step(token, state)  # one step on from the carried state
        return torch.cat(out)


class SequenceClassifier(nn.Module):
    """Sequences (B, T, input_size) with optional true lengths (B,), or images (B, C, H, W) read as H steps of C*W
    features -> class logits (B, num_classes) from the last layer's final hidden state."""

    def __init__(self, input_size: int, num_classes: int, hidden_size: int = 128, num_layers: int = 1,
                 dropout: float = 0.0, forget_bias: float | None = None) -> None:
        super().__init__()
        check_sizes(hidden_size=hidden_size, num_layers=num_layers)
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        if forget_bias is not None:
            open_forget_gates(self.lstm, forget_bias)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, num_classes)

    def forward(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        if x.ndim == 4:
            x = x.permute(0, 2, 1, 3).flatten(2)  # (B, H, C*W): step t reads row t of every channel
        if lengths is not None:  # padded batch: each sequence stops at its own length, padding never enters
            x = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = recur(self.lstm, x)  # h: (num_layers, B, hidden_size), in the batch's own order even when packed
        return self.head(self.dropout(h[-1]))  # (B, num_classes)


def build(*, vocab_size: int | None = None, vocab: list[str] | None = None, num_classes: int | None = None,
          in_channels: int = 1, image_size: tuple[int, int] | None = None, embedding_dim: int = 64,
          hidden_size: int = 256, num_layers: int = 2, dropout: float = 0.1, tie_weights: bool = False,
          forget_bias: float | None = None) -> nn.Module:
    """The network the data asks for. `vocab` (the characters) only rides along in net_kwargs, so the checkpoint
    can decode ids; the network needs its size. embedding_dim and tie_weights are the language model's: a
    classifier reads pixels, not ids (the shared config sets them for text)."""
    lstm = dict(hidden_size=hidden_size, num_layers=num_layers, dropout=dropout, forget_bias=forget_bias)
    if vocab_size is not None:
        return CharLM(vocab_size, embedding_dim=embedding_dim, tie_weights=tie_weights, **lstm)
    if num_classes is not None and image_size is not None:
        if tie_weights:
            raise ValueError("tie_weights=true ties a language model's embedding to its head; an image classifier "
                             "has no embedding: drop it")
        return SequenceClassifier(in_channels * image_size[1], num_classes, **lstm)
    raise ValueError("the LSTM needs data that gives vocab_size (a text corpus: data=shakespeare|tinyshakespeare|text) "
                     "or num_classes and image_size (images read row by row: data=fashion_mnist_rows)")


build.reads = ("text", "images")  # the data kinds it is built for (train.py refuses others in one line)
