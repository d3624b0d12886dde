"""The curated schema of a CT slice example, installed as package data of `ctseg.schemas`."""
from importlib import resources

# A real file both in the work tree and in a wheel install (site-packages/ctseg/schemas/).
SCHEMA_FILE = str(resources.files(__name__) / "schema.pbtxt")
# When `ctseg predict` reports a series as unlike the model's training data (ctseg/predict/ood.py).
IN_DISTRIBUTION_FILE = str(resources.files(__name__) / "in_distribution.pbtxt")
