"""The MLflow pyfunc wrapper every registered Rapport model is logged with.

:func:`models.registry.register` pickles the native model (a ``ChurnModel``, ``ValueModel``
or ``NbaModel``) as the artifact ``native`` and logs an instance of :class:`RapportPyfunc`
beside it; MLflow stores the instance by reference to this module, so loading a model
imports ``models`` only (never ``training``) and the service may load what training logged.
``unwrap_python_model().model`` gives the fast native object back (what serving and batch
scoring use); ``predict`` answers MLflow's generic interface:

* churn: a frame with ``p_churn``;
* value: ``value_mean, value_p10, value_p50, value_p90``;
* nba: ``uplift_conversion_<action>`` and ``uplift_revenue_<action>`` per action.
"""

from __future__ import annotations

import pickle
from typing import Any

import pandas as pd
from mlflow.pyfunc import PythonModel


class RapportPyfunc(PythonModel):
    """Predicts from a feature frame; ``.model`` is the native model of ``.kind``."""

    model: Any
    kind: str

    def load_context(self, context: Any) -> None:
        with open(context.artifacts["native"], "rb") as handle:
            self.model = pickle.load(handle)
        self.kind = context.model_config["kind"]

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.DataFrame:
        if self.kind == "churn":
            return pd.DataFrame({"p_churn": self.model.predict_proba(model_input)})
        if self.kind == "nba":
            return self.model.predict(model_input).to_frame().reset_index(drop=True)
        return self.model.predict(model_input).reset_index(drop=True)
