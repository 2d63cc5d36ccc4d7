"""The MLflow python-model flavour of the linear families' models (imported only when MLflow logs or loads one).

`mlflow.pyfunc.load_model("models:/stock_platform_ridge/1").predict(frame)` serves a registered ridge or AR version
to any MLflow user; the platform itself serves the lake's copy of the same text (`registry.py`).
"""

from __future__ import annotations

import mlflow.pyfunc


class FamilyModel(mlflow.pyfunc.PythonModel):
    """A fitted model of a `lib.families` family, kept as its text; predicts on rows of the features table."""

    def __init__(self, family: str, text: str):
        self.family, self.text = family, text

    def predict(self, context, model_input, params=None):
        import polars as pl

        from stock_platform.lib.families import FAMILIES

        family = FAMILIES[self.family]
        return family.predict_frame(family.loads(self.text), pl.from_pandas(model_input))
