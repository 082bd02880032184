"""Fashion-MNIST with a small timm ResNet: the recipe's quick proof on a laptop CPU.

    accelerate launch --config_file accelerate_configs/cpu_2proc.yaml recipes/fashion_mnist.py \
        --global-batch 4096 --micro-batch 256
"""
from largebatch.training.recipes import run_recipe

if __name__ == "__main__":
    run_recipe("fashion_mnist")
