"""Side-by-side equivalence, the pure core: compare what clients received, explain, report.

Nothing here touches sockets or processes (tests/unit/test_layering.py enforces it):
the runner in swapctl.scenarios drives real relays and hands this package bytes.
"""

from swapctl.diff.align import Category, Difference, Item
from swapctl.diff.compare import ClientResult, Comparison, Mode, Suppressed, compare
from swapctl.diff.tokens import Gap, Stream, frame_stream

__all__ = [
    "Category",
    "ClientResult",
    "Comparison",
    "Difference",
    "Gap",
    "Item",
    "Mode",
    "Stream",
    "Suppressed",
    "compare",
    "frame_stream",
]
