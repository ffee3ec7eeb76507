"""Networks: the multi-class-token ViT classifier (``vit``), AffinityNet (``affinitynet``), the segmenter
(``segmenter``: DeepLab on an smp encoder) and the shipped ImageNet CNN (``imagenet_cnn``); what each is fed
(``inputs``) and how unusable starting weights are reported (``weights``).
"""
