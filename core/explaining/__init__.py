"""Attributions: model-agnostic methods on the shipped ONNX session, Integrated Gradients on the torch model,
and the checks that they mean something. Imports estimators, exporting, tracking, training and the floor."""

#: the methods ``trainforge explain --method`` takes (see :mod:`trainforge.explaining.methods`)
METHODS = ("permutation", "shap", "kernel-shap", "integrated-gradients", "occlusion")
