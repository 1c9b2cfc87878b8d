"""A progress bar over matrix-vector products for the slow estimators (``progress=True``)."""

from __future__ import annotations

import sys
from typing import Any


def product_bar(progress: bool, total: int, desc: str) -> Any:
    """A tqdm bar on stderr counting up to ``total`` products, or None when ``progress`` is
    false. Call ``update(n)`` after ``n`` products and ``close()`` at the end."""
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="product", file=sys.stderr, dynamic_ncols=True)
