"""The MLflow "model from code" of a recipeset pyfunc model (recipeset.pyfunc): MLflow copies this file into the
logged model and runs it when the model is loaded; the weights come from the model's ``model_dir`` artifact."""

import mlflow

from recipeset.pyfunc import RecipeCompleter

mlflow.models.set_model(RecipeCompleter())
