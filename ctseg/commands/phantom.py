"""`ctseg phantom --out OUT` (or `ctseg phantom OUT`): write the synthetic IRCAD phantom."""
from __future__ import annotations

from ctseg.commands import add_out_argument


def register(sub) -> None:
    p = sub.add_parser("phantom", help="write a synthetic CT phantom in the 3D-IRCADb-01 layout",
                       description="Write a synthetic abdominal CT phantom (HU, organ and lesion masks) in the exact "
                                   "3D-IRCADb-01 layout, as folders or as the published nested zips.")
    add_out_argument(p, "output folder (or .zip path with --zip)")
    p.add_argument("out_path", nargs="?", metavar="OUT", help="the same as --out")
    p.add_argument("--patients", type=int, default=3, help="number of patients (default 3)")
    p.add_argument("--slices", type=int, default=60,
                   help="slices of an abdominal scan per patient, varied +-20%%; abdomen-pelvis and chest-abdomen "
                        "scans have proportionally more (default 60)")
    p.add_argument("--size", type=int, default=512, help="rows and columns of each slice (default 512)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same pixels")
    p.add_argument("--zip", action="store_true", help="write the published 3Dircadb1.zip form with nested zips")
    p.add_argument("--phases", nargs="+", choices=("native", "arterial", "portal"), default=None,
                   help="contrast phases patients draw from (default: all three)")
    p.add_argument("--noise-hu", nargs=2, type=float, metavar=("LOW", "HIGH"), default=(8.0, 25.0),
                   help="range of the per-patient noise standard deviation in HU (default 8 25)")
    p.add_argument("--protocols", nargs="+", choices=("abdomen", "abdomen_pelvis", "chest_abdomen"), default=None,
                   help="scan ranges patients draw from (default: all three, half of them abdomen)")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys

    from ctseg.errors import CtsegError
    from ctseg.phantom import PROTOCOLS, write_phantom
    from ctseg.phantom.tissues import PHASES

    if bool(args.out) == bool(args.out_path):
        raise CtsegError("give the output folder once, as --out OUT (or as OUT)")
    path = write_phantom(args.out or args.out_path, patients=args.patients, slices=args.slices, size=args.size,
                         seed=args.seed, as_zip=args.zip, progress=sys.stderr.isatty(),
                         phases=tuple(args.phases or PHASES), noise_hu=tuple(args.noise_hu),
                         protocols=tuple(args.protocols or PROTOCOLS))
    print(f"wrote {args.patients} phantom patients to {path}")
    return 0
