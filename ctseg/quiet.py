"""Keeps TensorFlow's and Google client libraries' start-up noise away from users unless --verbose."""
import logging
import os
import warnings


def silence(verbose: bool) -> None:
    """Must run before TensorFlow is imported to catch its C++ log lines."""
    if verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # Beam worker subprocesses inherit this
    for category in (FutureWarning, DeprecationWarning, UserWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    for name in ("tensorflow", "absl", "apache_beam", "tfx", "ml_metadata", "kfp", "h5py", "matplotlib"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from absl import logging as absl_logging
        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:
        pass
