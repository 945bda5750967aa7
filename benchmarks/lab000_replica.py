"""Lab 000's own training script, rebuilt: the pytorch/examples MNIST loop (`python3 main.py`)
with one of our networks, printing the lab's per-epoch lines (test loss, test accuracy).

Why a loop of its own: lab 000 does not name the network of its sections 1-2, and the lab's
numbers are those of one seeded run of that script. Run the same way (``torch.manual_seed(1)``,
the net built right after, batch 64, pixels standardized with mean 0.1307 / std 0.3081, SGD,
StepLR stepped after every epoch, the 10,000 test images after every epoch, the 60,000 training
images in file order: the lab's loader does not shuffle), the right network gives the lab's
numbers to float precision, which our Lightning runs (other seeds, shuffled batches, a
validation split) cannot show. docs/studies.md (lab 000) lists what each candidate gave.

    python -m benchmarks.lab000_replica --hidden 512 256 --lr 0.001 --gamma 0.85 --epochs 1
    python -m benchmarks.lab000_replica --cnn --lr 0.0001 --gamma 0.7 --epochs 2
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from mnist_lab.data import mnist_arrays
from mnist_lab.data.mnist_arrays import MEAN, STD
from mnist_lab.models import CNN, MLP


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hidden", type=int, nargs="*", default=[512, 256], help="MLP widths ([] = softmax regression)")
    p.add_argument("--activation", default="relu")
    p.add_argument("--dropout", type=float, default=0.0, help="after each hidden layer (--cnn: before the output)")
    p.add_argument("--cnn", action="store_true", help="the pytorch/examples CNN instead of an MLP")
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--gamma", type=float, default=0.7)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--epochs", type=int, default=14)
    p.add_argument("--seed", type=int, default=1, help="the example's default")
    p.add_argument("--shuffle", action="store_true", help="shuffle the training images (the example does)")
    p.add_argument("--data", default="data")
    return p.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse(argv)
    arrays = mnist_arrays.load_arrays(args.data)
    mean, std = torch.tensor([MEAN]), torch.tensor([STD])

    def dataset(split: str) -> TensorDataset:  # torchvision's ToTensor, then Normalize
        x = arrays[f"{split}_images"].float().div(255).sub(mean).div(std).unsqueeze(1)
        return TensorDataset(x, arrays[f"{split}_labels"].long())

    train, test = dataset("train"), dataset("test")
    torch.manual_seed(args.seed)
    train_loader = DataLoader(train, batch_size=64, shuffle=args.shuffle)
    test_loader = DataLoader(test, batch_size=1000)
    if args.cnn:
        net = CNN(dropout=0.5 if args.dropout == 0 else args.dropout)
    else:
        net = MLP(args.hidden, args.activation, args.dropout)
    make = torch.optim.Adam if args.optimizer == "adam" else torch.optim.SGD
    optimizer = make(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=args.gamma)
    rows = []
    for epoch in range(1, args.epochs + 1):
        net.train()
        total = 0.0
        for x, y in train_loader:
            optimizer.zero_grad()
            loss = F.cross_entropy(net(x), y)
            loss.backward()
            optimizer.step()
            total += loss.item()
        net.eval()
        test_loss, correct = 0.0, 0
        with torch.no_grad():
            for x, y in test_loader:
                logits = net(x)
                test_loss += F.cross_entropy(logits, y, reduction="sum").item()
                correct += int((logits.argmax(1) == y).sum())
        row = {
            "epoch": epoch,
            "last_batch_loss": loss.item(),
            "train_loss": total / len(train_loader),
            "test_loss": test_loss / len(test),
            "test_acc": 100.0 * correct / len(test),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
        scheduler.step()
    return rows


if __name__ == "__main__":
    main()
