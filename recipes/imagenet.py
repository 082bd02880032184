"""ImageNet-1k with timm's ResNet-50: the paper's headline experiment.

    accelerate launch --config_file accelerate_configs/multinode_32x8.yaml recipes/imagenet.py \
        --data-dir /data/imagenet --global-batch 8192 --micro-batch 32
"""
from largebatch.datasets import ImageFolderImages
from largebatch.recipe import run_recipe

# Over the library's defaults (the paper's); `largebatch sweep` reads them to check a grid before running it.
DEFAULTS = dict(model="resnet50", micro_batch=32, epochs=90, workers=8)

if __name__ == "__main__":
    run_recipe("imagenet", ImageFolderImages, **DEFAULTS)
