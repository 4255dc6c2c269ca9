"""The logged MLflow model's code (MLflow's "models from code": it runs this file to load the model).

The model is :class:`rps.inference.classifier.RpsModel`; the ``rps`` package travels inside every logged model
(``code_paths``), so loading needs no pickled Python object and no installed rps.
"""

import mlflow

from rps.inference.classifier import RpsModel

mlflow.models.set_model(RpsModel())
