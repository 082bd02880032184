"""CIFAR-10 (the python batches) with a CIFAR-style timm ResNet-18.

    accelerate launch --config_file accelerate_configs/gpu_1.yaml recipes/cifar10.py \
        --data-dir /data/cifar-10-batches-py --global-batch 2048 --micro-batch 256 --epochs 30
"""
from largebatch.training.recipes import run_recipe

if __name__ == "__main__":
    run_recipe("cifar10")
