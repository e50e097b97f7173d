"""scikit-learn estimators as a model kind (ModelSpec(fit="estimator")): fit once, log, export with
skl2onnx. Registers itself in trainforge.kinds. Imports exporting, tracking, training and the floor."""
