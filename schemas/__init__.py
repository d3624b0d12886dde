"""The curated schema of a CT slice example, installed as package data of `ctseg.schemas`."""
from importlib import resources

# A real file both in the work tree and in a wheel install (site-packages/ctseg/schemas/).
SCHEMA_FILE = str(resources.files(__name__) / "schema.pbtxt")
