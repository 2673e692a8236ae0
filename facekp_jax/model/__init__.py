"""The network: the ResNet and its heads, losses, test-time augmentation, the inference function."""
