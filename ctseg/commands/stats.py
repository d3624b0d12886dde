"""`ctseg stats PATH`: a readable per-split summary of StatisticsGen's output, and TFDV's HTML view of it."""
from __future__ import annotations

from pathlib import Path

from ctseg.commands import add_out_argument
from ctseg.errors import CtsegError
from ctseg.mlmd.files import SPLIT_PREFIX

STATS_FILE = "FeatureStats.pb"


def register(sub) -> None:
    p = sub.add_parser("stats", help="summarise the example statistics of a pipeline run",
                       description="Print a per-split summary of a StatisticsGen output (slice count, per-feature "
                                   "min/mean/max, liver fraction distribution, slices per patient), and optionally "
                                   "write TFDV's visualisation as an HTML page to open in a browser.")
    p.add_argument("path", help="a StatisticsGen statistics artifact folder (holding Split-*/FeatureStats.pb), or a "
                                "pipeline root, where the newest StatisticsGen output is used")
    add_out_argument(p, "write TFDV's visualisation (train against eval) to this HTML file (also --html)", "--html")
    p.set_defaults(func=run)


def _execution_order(artifact_dir: Path) -> tuple:
    """Newest first: TFX names artifact folders by execution id; the modification time breaks ties."""
    return (int(artifact_dir.name) if artifact_dir.name.isdigit() else -1, artifact_dir.stat().st_mtime)


def find_statistics_dir(path: str | Path) -> Path:
    """`path` itself if it is a statistics artifact, else the newest StatisticsGen output below it."""
    path = Path(path)
    if not path.is_dir():
        raise CtsegError(f"{path}: no such folder")
    if any(path.glob(f"{SPLIT_PREFIX}*/{STATS_FILE}")):
        return path
    found = {f.parent.parent for f in path.glob(f"**/{SPLIT_PREFIX}*/{STATS_FILE}")}
    preferred = {d for d in found if "StatisticsGen" in d.parts} or found
    if not preferred:
        raise CtsegError(f"{path}: holds no StatisticsGen output (Split-<name>/{STATS_FILE}); "
                         f"pass a pipeline root or a statistics artifact folder")
    return max(preferred, key=_execution_order)


def _split_order(split: str) -> tuple:
    return split != "train", split != "eval", split


def load_statistics_dir(artifact_dir: Path) -> dict:
    """{split name: DatasetFeatureStatistics} of a statistics artifact folder, train first, then eval."""
    import tensorflow_data_validation as tfdv

    from ctseg.mlmd.files import split_dirs

    found = {split: Path(folder) / STATS_FILE for split, folder in split_dirs(artifact_dir).items()}
    return {split: tfdv.load_stats_binary(str(found[split])).datasets[0]
            for split in sorted((s for s in found if found[s].exists()), key=_split_order)}


def write_html(stats_by_split: dict, out: str | Path) -> Path:
    """TFDV's Facets view of the first two splits (train against eval), side by side."""
    from tensorflow_data_validation.utils.display_util import get_statistics_html
    from tensorflow_metadata.proto.v0 import statistics_pb2

    names = list(stats_by_split)
    as_list = [statistics_pb2.DatasetFeatureStatisticsList(datasets=[stats_by_split[n]]) for n in names[:2]]
    html = get_statistics_html(as_list[0], as_list[1] if len(as_list) > 1 else None,
                               lhs_name=names[0], rhs_name=names[1] if len(names) > 1 else "rhs_statistics")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>ctseg statistics</title></head>"
                   f"<body>{html}</body></html>")
    return out


def run(args) -> int:
    artifact_dir = find_statistics_dir(args.path)  # before TFDV's import, which takes most of a minute

    from ctseg.components.validation.report import statistics_summary

    stats_by_split = load_statistics_dir(artifact_dir)
    print(f"statistics: {artifact_dir}")
    print(statistics_summary(stats_by_split))
    if args.out:
        print(f"wrote TFDV's visualisation to {write_html(stats_by_split, args.out)} (open it in a browser)")
    return 0
