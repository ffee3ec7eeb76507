"""Networks: the multi-class-token ViT classifier (``vit``), AffinityNet (``affinitynet``), DeepLab."""
