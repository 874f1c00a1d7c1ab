"""The pipeline's stages as the notebooks call them: collect, filter, evaluation with refinement."""
