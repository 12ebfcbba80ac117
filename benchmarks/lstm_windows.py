"""Why the language model trains on random windows from a zero state, not contiguous windows with the state carried.

    python benchmarks/lstm_windows.py [--path ../shared/datasets/tinyshakespeare.txt] [--steps 600] [--hidden 256]

Trains the project's CharLM twice, in the same process, for the same number of steps with the same batch shape,
optimizer, learning rate and gradient clipping, on the training 90% of the file:
  random   each step reads B windows of T+1 characters at uniformly random offsets, every window from a zero
           state (data/text.py also starts every window from a zero state, but draws the offsets stratified: one
           window per T characters of the corpus, each shifted by a random 0..T-1, in a shuffled order, so an
           epoch covers the corpus evenly; this benchmark's windows are independent draws);
  carried  the text is cut into B contiguous streams; step t reads characters [tT, (t+1)T] of every stream and
           starts from the state the previous step ended in, detached (truncated backpropagation through time).
Both are scored on the validation 5% twice: in windows of 512 characters from a zero state (how the project
evaluates) and as one stream per row with the state carried through the whole split (the most context a model
can use). Prints one JSON object: characters/s and both validation losses (nats per character) for each mode.
"""
import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.arguments import at_least  # noqa: E402
from data import not_a_file  # noqa: E402
from data.text import UNK, encode  # noqa: E402
from models.lstm import CharLM  # noqa: E402


VALIDATION_WINDOW = 512  # characters


def random_batches(ids: torch.Tensor, batch: int, length: int, generator: torch.Generator):
    steps = torch.arange(length + 1)
    while True:
        starts = torch.randint(0, len(ids) - length - 1, (batch,), generator=generator)
        chunk = ids[starts[:, None] + steps]
        yield chunk[:, :-1], chunk[:, 1:], False  # False: start from a zero state


def carried_batches(ids: torch.Tensor, batch: int, length: int, generator: torch.Generator):
    per_stream = (len(ids) - 1) // batch
    streams = ids[:per_stream * batch + 1]
    inputs, targets = streams[:-1].view(batch, per_stream), streams[1:].view(batch, per_stream)
    while True:
        for t in range(0, per_stream - length + 1, length):  # a new pass restarts every stream from a zero state
            yield inputs[:, t:t + length], targets[:, t:t + length], t > 0


@torch.no_grad()
def validation_losses(net: CharLM, ids: torch.Tensor) -> dict:
    net.eval()
    window = VALIDATION_WINDOW
    n = (len(ids) - 1) // window
    chunk = ids[:n * window + 1]
    x, y = chunk[:-1].view(n, window), chunk[1:].view(n, window)
    windows = F.cross_entropy(net(x).flatten(0, 1), y.flatten()).item()  # each window from a zero state
    streams = 8  # the split as 8 contiguous rows, read 512 characters at a time with the state carried
    per = (len(ids) - 1) // streams
    x, y = ids[:per * streams].view(streams, per), ids[1:per * streams + 1].view(streams, per)
    state, total = None, 0.0
    for t in range(0, per, window):
        logits, state = net.step(x[:, t:t + window], state)
        total += F.cross_entropy(logits.flatten(0, 1), y[:, t:t + window].flatten(), reduction="sum").item()
    net.train()
    return {"val_loss_zero_state_windows": round(windows, 4), "val_loss_carried_state": round(total / y.numel(), 4)}


def train(mode: str, train_ids, val_ids, vocab_size: int, args, validate: bool = True) -> dict:
    torch.manual_seed(0)
    net = CharLM(vocab_size, 64, args.hidden, 2, dropout=0.1)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=args.steps)
    batches = (random_batches if mode == "random" else carried_batches)(
        train_ids, args.batch, args.seq_len, torch.Generator().manual_seed(0))
    state, start = None, time.perf_counter()
    for _ in range(args.steps):
        inputs, targets, carry = next(batches)
        state = tuple(s.detach() for s in state) if carry and state is not None else None
        logits, state = net.step(inputs, state)
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    seconds = time.perf_counter() - start
    if not validate:
        return {}
    return {"mode": mode, "steps": args.steps, "seconds": round(seconds, 1),
            "chars_per_s": round(args.steps * args.batch * args.seq_len / seconds), **validation_losses(net, val_ids)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", type=Path, default=ROOT.parent / "shared" / "datasets" / "tinyshakespeare.txt")
    parser.add_argument("--steps", type=at_least(int, 1), default=600)
    parser.add_argument("--batch", type=at_least(int, 1), default=64)
    parser.add_argument("--seq-len", type=at_least(int, 1), default=128)
    parser.add_argument("--hidden", type=at_least(int, 1), default=256)
    args = parser.parse_args()
    # Bad input is argparse's one error line and exit 2, as for a bad number (benchmarks/arguments.py).
    if what := not_a_file(args.path):
        parser.error(f"--path {args.path}: {what}; give a text file, e.g. the tinyshakespeare copy in "
                     "../shared/datasets/ of a checkout beside the shared folder")
    try:
        text = args.path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        parser.error(f"--path {args.path} is not UTF-8 text (byte {err.start}); give a UTF-8 text file")
    n_train, n_val = round(len(text) * 0.9), round(len(text) * 0.05)
    # carried mode reads --batch streams of at least one window; validation, windows of 512 characters
    if n_train - 1 < args.batch * (args.seq_len + 1) or n_val < VALIDATION_WINDOW + 1:
        least = math.ceil(max((args.batch * (args.seq_len + 1) + 1) / 0.9, (VALIDATION_WINDOW + 1) / 0.05))
        parser.error(f"--path {args.path} has {len(text):,} characters; it needs {least:,} at least (90% to train: "
                     f"--batch {args.batch} streams of a --seq-len {args.seq_len} window; 5% to validate: a "
                     f"{VALIDATION_WINDOW}-character window): give a longer text or smaller --batch/--seq-len")
    vocab = [UNK] + sorted(set(text[:n_train]))
    train_ids, val_ids = encode(text[:n_train], vocab), encode(text[n_train:n_train + n_val], vocab)
    # Untimed: a process's first steps pay for allocations and first calls, which would slow whichever mode ran first.
    train("random", train_ids, val_ids, len(vocab), argparse.Namespace(**{**vars(args), "steps": min(args.steps, 20)}),
          validate=False)
    results = [train(mode, train_ids, val_ids, len(vocab), args) for mode in ("random", "carried")]
    print(json.dumps({"device": "cpu", "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "batch": args.batch, "seq_len": args.seq_len, "hidden": args.hidden, "results": results},
                     indent=2))


if __name__ == "__main__":
    main()
