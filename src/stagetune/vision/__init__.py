"""Image classification: a ResNet34 split into three layer groups, its weights, and image data."""
