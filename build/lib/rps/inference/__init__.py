"""Using a trained model: the classifier that takes images in any common form (classifier.py),
the MLflow pyfunc model logged with every run (mlflow_model.py) and batch prediction of image
files (predict.py). Imports rps.common, rps.data and rps.model; reads MLflow, never writes it."""
