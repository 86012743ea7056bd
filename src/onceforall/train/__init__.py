"""Progressive shrinking: recipes, the training loop, BN recalibration and evaluation."""

from onceforall.registry import load_supernet, save_supernet
from onceforall.train.bn import set_running_statistics
from onceforall.train.evaluate import SubnetEvaluator, accuracy
from onceforall.train.recipe import Phase, Recipe, load_recipe, recipe_from_dict
from onceforall.train.schedule import learning_rate
from onceforall.train.trainer import Trainer, TrainingDiverged

__all__ = [
    "Phase",
    "Recipe",
    "SubnetEvaluator",
    "Trainer",
    "TrainingDiverged",
    "accuracy",
    "learning_rate",
    "load_recipe",
    "load_supernet",
    "recipe_from_dict",
    "save_supernet",
    "set_running_statistics",
]
