"""CIFAR-10 (the python batches) with a CIFAR-style timm ResNet-18.

    accelerate launch --config_file accelerate_configs/gpu_1.yaml recipes/cifar10.py \
        --data-dir /data/cifar-10-batches-py --global-batch 2048 --micro-batch 256 --epochs 30
"""
from largebatch.datasets import load_cifar10
from largebatch.recipe import run_recipe

# Over the library's defaults (the paper's); `largebatch sweep` reads them to check a grid before running it.
DEFAULTS = dict(model="resnet18_cifar", micro_batch=128, epochs=30)

if __name__ == "__main__":
    run_recipe("cifar10", load_cifar10, **DEFAULTS)
