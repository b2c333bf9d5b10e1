"""MNIST (LeCun et al. 1998): 60k/10k 28x28 handwritten digits. No Debian package; cached or downloaded."""

from __future__ import annotations

from ssmoe_cli.data.idx_dataset import IdxDataModule


class MNIST(IdxDataModule):
    name = "mnist"
    mirror = "https://ossci-datasets.s3.amazonaws.com/mnist/"
    md5 = {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }
