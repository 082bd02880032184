"""ImageNet-1k with timm's ResNet-50: the paper's headline experiment.

    accelerate launch --config_file accelerate_configs/multinode_32x8.yaml recipes/imagenet.py \
        --data-dir /data/imagenet --global-batch 8192 --micro-batch 32
"""
from largebatch.training.recipes import run_recipe

if __name__ == "__main__":
    run_recipe("imagenet")
