"""Fashion-MNIST with a small timm ResNet: the recipe's quick proof on a laptop CPU.

    accelerate launch --config_file accelerate_configs/cpu_2proc.yaml recipes/fashion_mnist.py \
        --global-batch 4096 --micro-batch 256
"""
from largebatch.datasets import load_fashion_mnist
from largebatch.recipe import run_recipe

# Over the library's defaults (the paper's); `largebatch sweep` reads them to check a grid before running it.
DEFAULTS = dict(model="resnet_fmnist", micro_batch=256, epochs=12, warmup_epochs=2)

if __name__ == "__main__":
    run_recipe("fashion-mnist", load_fashion_mnist, **DEFAULTS)
