"""Built-in scikit-learn estimators: ``random-forest``, ``gradient-boosting``, ``logistic-regression`` and
``linear-svm``.

``fit="estimator"``: trainforge fits them once on the flattened training rows (no epochs), tracks them in
MLflow like any run, exports them with skl2onnx and predicts with the same ``trainforge predict`` (see
:mod:`trainforge.estimators.kind`). Estimator builders receive ``task`` and ``seed`` besides the shape.
"""

from __future__ import annotations

import trainforge


def build_random_forest(input_shape, output_dim, task, seed=0, n_estimators=100, max_depth=None,
                        min_samples_leaf=1, max_features="sqrt"):
    """``RandomForestClassifier`` or ``RandomForestRegressor`` (Breiman 2001); scikit-learn's defaults
    except ``max_features="sqrt"`` for regression too. Multi-target regression is native."""
    from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

    cls = RandomForestClassifier if task == "classification" else RandomForestRegressor
    return cls(n_estimators=int(n_estimators), max_depth=None if max_depth is None else int(max_depth),
               min_samples_leaf=int(min_samples_leaf), max_features=max_features, random_state=int(seed), n_jobs=1)


def build_gradient_boosting(input_shape, output_dim, task, seed=0, n_estimators=100, learning_rate=0.1,
                            max_depth=3, subsample=1.0):
    """``GradientBoostingClassifier`` or ``GradientBoostingRegressor`` (Friedman 2001), scikit-learn's
    defaults. Regression takes one target (``ValueError`` otherwise)."""
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

    if task != "classification" and output_dim != 1:
        raise ValueError(f"gradient-boosting regression takes one target, the data has {output_dim}")
    cls = GradientBoostingClassifier if task == "classification" else GradientBoostingRegressor
    return cls(n_estimators=int(n_estimators), learning_rate=float(learning_rate), max_depth=int(max_depth),
               subsample=float(subsample), random_state=int(seed))


def build_logistic_regression(input_shape, output_dim, task, seed=0, C=1.0, max_iter=1000):
    """``StandardScaler`` then multinomial ``LogisticRegression`` (L2 penalty, lbfgs), scikit-learn's defaults
    except ``max_iter=1000``. The scaler is fitted on the training rows (the estimator sees raw rows) and is
    part of the exported graph. Classification only (``ValueError`` otherwise)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if task != "classification":
        raise ValueError(f"logistic-regression is a classifier, not a {task} model")
    return make_pipeline(StandardScaler(), LogisticRegression(C=float(C), max_iter=int(max_iter),
                                                              random_state=int(seed)))


def build_linear_svm(input_shape, output_dim, task, seed=0, C=1.0, max_iter=1000, calibration_folds=3):
    """``StandardScaler`` then a linear SVM (``LinearSVC``: squared hinge loss, L2 penalty, one-vs-rest) whose
    decision values become probabilities by Platt's sigmoid calibration (``CalibratedClassifierCV``,
    ``method="sigmoid"``, fitted on ``calibration_folds`` cross-validation folds of the training rows; Platt
    1999). scikit-learn's defaults except ``max_iter=1000`` and 3 folds. Classification only (``ValueError``
    otherwise)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    if task != "classification":
        raise ValueError(f"linear-svm is a classifier, not a {task} model")
    svm = LinearSVC(C=float(C), max_iter=int(max_iter), random_state=int(seed))
    return make_pipeline(StandardScaler(), CalibratedClassifierCV(svm, method="sigmoid", cv=int(calibration_folds)))


def forest_space(trial):
    return {"n_estimators": trial.suggest_int("n_estimators", 50, 400, log=True),
            "max_depth": trial.suggest_categorical("max_depth", [None, 4, 8, 16]),
            "min_samples_leaf": trial.suggest_int("min_samples_leaf", 1, 8)}


def logistic_space(trial):
    return {"C": trial.suggest_float("C", 1e-3, 1e2, log=True)}


def boosting_space(trial):
    return {"n_estimators": trial.suggest_int("n_estimators", 50, 400, log=True),
            "learning_rate": trial.suggest_float("learning_rate", 0.01, 0.3, log=True),
            "max_depth": trial.suggest_int("max_depth", 2, 5)}


@trainforge.hookimpl
def register_models(register):
    register(trainforge.ModelSpec(
        name="random-forest", description="scikit-learn random forest (fitted once; ONNX via skl2onnx)",
        build=build_random_forest, fit="estimator", input="vector", tasks={"classification", "regression"},
        defaults={"n_estimators": 100, "max_depth": None, "min_samples_leaf": 1, "max_features": "sqrt"},
        param_help={"n_estimators": "trees", "max_depth": "maximum tree depth (null: unlimited)",
                    "min_samples_leaf": "minimum samples per leaf", "max_features": "features tried per split"},
        search_space=forest_space))
    register(trainforge.ModelSpec(
        name="gradient-boosting", description="scikit-learn gradient-boosted trees (fitted once; ONNX via skl2onnx)",
        build=build_gradient_boosting, fit="estimator", input="vector", tasks={"classification", "regression"},
        defaults={"n_estimators": 100, "learning_rate": 0.1, "max_depth": 3, "subsample": 1.0},
        param_help={"n_estimators": "boosting stages", "learning_rate": "shrinkage per stage",
                    "max_depth": "depth of each tree", "subsample": "row fraction per stage"},
        search_space=boosting_space))
    register(trainforge.ModelSpec(
        name="logistic-regression", description="scikit-learn standardized logistic regression (fitted once)",
        build=build_logistic_regression, fit="estimator", input="vector", tasks={"classification"},
        defaults={"C": 1.0, "max_iter": 1000},
        param_help={"C": "inverse L2 regularization strength", "max_iter": "lbfgs iterations at most"},
        search_space=logistic_space))
    register(trainforge.ModelSpec(
        name="linear-svm", description="scikit-learn standardized linear SVM, sigmoid-calibrated (fitted once)",
        build=build_linear_svm, fit="estimator", input="vector", tasks={"classification"},
        defaults={"C": 1.0, "max_iter": 1000, "calibration_folds": 3},
        param_help={"C": "inverse L2 regularization strength", "max_iter": "liblinear iterations at most",
                    "calibration_folds": "cross-validation folds of the sigmoid calibration"},
        search_space=logistic_space))
