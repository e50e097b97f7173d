"""Run layer: ``train(...)``, one MLflow run = data -> model kind's fit -> tracking -> export gate.
Imports every wing below it (estimators through trainforge.kinds only) and the floor; never tuning."""
