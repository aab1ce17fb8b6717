"""The approaches' names, declared once at the bottom of the engine.

Settings (the CLI's and Train page's choices), bundle imports and the run record learn them here
without importing the registry (core.approaches), whose fits import the trainers that read settings.
A new approach adds its name here and its `@register`ed fit in core.approaches (which refuses a name
not declared here); a test checks both list the same names in the same order.
"""

APPROACH_NAMES = ("svm", "head", "logreg", "finetune")
