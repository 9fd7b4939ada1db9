"""The staged-training engine: layer groups, plans of stages, the callbacks that apply them."""
