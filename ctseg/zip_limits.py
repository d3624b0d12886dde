"""The limits a file or zip member must keep to be read, so that a small hostile archive cannot exhaust
memory or write outside it: absolute or `..` member names are refused, members over MAX_MEMBER_BYTES
and, above RATIO_CHECKED_ABOVE_BYTES, a compression ratio over MAX_COMPRESSION_RATIO (a zip bomb)."""
from __future__ import annotations

import re
from typing import Optional

from ctseg.errors import CtsegError

# Limits on what a file or zip member may inflate to, so a small hostile zip cannot exhaust memory. A DICOM
# slice of IRCAD is 0.5 MiB and a patient's PATIENT_DICOM.zip about 100 MiB. Blank masks deflate about 1000:1,
# so the ratio is only checked on members big enough to matter.
MAX_MEMBER_BYTES = 1 << 30
MAX_COMPRESSION_RATIO = 200
RATIO_CHECKED_ABOVE_BYTES = 16 << 20


class MemberError(CtsegError):
    """A file or zip member that cannot be read safely; `source` names it, `reason` says why, for a person."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


def check_size(location: str, size: int, compressed: Optional[int] = None) -> None:
    if size > MAX_MEMBER_BYTES:
        raise MemberError(location, f"inflates to {size >> 20} MiB, over the limit of {MAX_MEMBER_BYTES >> 20} MiB "
                                    f"for one file; not read")
    ratio_checked = compressed is not None and size > RATIO_CHECKED_ABOVE_BYTES
    if ratio_checked and size > MAX_COMPRESSION_RATIO * max(compressed, 1):
        raise MemberError(location, f"inflates {compressed} bytes to {size >> 20} MiB, a compression ratio of "
                                    f"{size // max(compressed, 1)}:1, over the limit of {MAX_COMPRESSION_RATIO}:1 for "
                                    f"members over {RATIO_CHECKED_ABOVE_BYTES >> 20} MiB (a zip bomb?); not read")


def unsafe_name(name: str) -> Optional[str]:
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        return "is an absolute path"
    if ".." in name.split("/"):
        return "climbs out of the archive with .."
    return None
