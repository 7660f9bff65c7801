"""The compression pipeline's stages that train nothing and run in its own process: vocab (vocabulary pruning of
the model handed on, then packing) and export (the deployable folder). Each returns (Model handed on, metrics)."""
STEPS = {}
