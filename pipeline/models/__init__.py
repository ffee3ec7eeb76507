"""Networks: the multi-class-token ViT classifier (``vit``), AffinityNet (``affinitynet``), DeepLab."""

# The input normalisation of every ImageNet-pretrained backbone (timm ViTs, smp / timm ResNets), used by
# all three networks whether or not they start from pretrained weights.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
