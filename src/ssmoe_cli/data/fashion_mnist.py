"""Fashion-MNIST (Xiao et al. 2017): 60k/10k 28x28 greyscale images of 10 clothing classes."""

from __future__ import annotations

from pathlib import Path

from ssmoe_cli.data.idx_dataset import IdxDataModule


class FashionMNIST(IdxDataModule):
    name = "fashion_mnist"
    mirror = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    md5 = {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }
    system_dir = Path("/usr/share/datasets/fashion-mnist")
    debian_package = "apt-get install dataset-fashion-mnist"
    # Label meanings from the dataset's README (Xiao et al. 2017).
    class_names = (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    )
