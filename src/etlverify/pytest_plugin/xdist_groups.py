"""Make `--dist loadgroup` honour our `xdist_group` marks on pytest >= 9.2.

`markers` puts every test that changes or reads deployment state into one xdist group so they never
run side by side. pytest-xdist's worker marks a group by assigning `item._nodeid`, but pytest 9.2
derives `nodeid` from `item._id`, so the `@group` suffix never appears and grouped tests are spread
over workers (pytest-dev/pytest-xdist#1386). This hook runs after xdist's and adds the suffix where
it is missing, the way xdist meant to. It does nothing without `--dist loadgroup`.
"""

from __future__ import annotations

import pytest

__all__ = ["pytest_collection_modifyitems"]


def _group_names(item: pytest.Item) -> list[str]:
    return sorted(
        {
            str(m.args[0] if m.args else m.kwargs.get("name", "default"))
            for m in item.iter_markers("xdist_group")
        }
    )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Append `@group` to the node ids of grouped items that xdist failed to rename."""
    # xdist sets `loadgroup` on the workers (their own `dist` is "no"), as its own hook reads it.
    if not getattr(config.option, "loadgroup", False) or not hasattr(config, "workerinput"):
        return
    for item in items:
        names = _group_names(item)
        if not names or "@" in item.nodeid:
            continue
        new_id = f"{item.nodeid}@{'_'.join(names)}"
        if hasattr(item, "_id"):
            from _pytest.nodeid import coerce_node_id  # type: ignore[import-not-found,unused-ignore]

            item._id = coerce_node_id(new_id)
        else:  # pytest < 9.2 stores the string itself
            item._nodeid = new_id  # type: ignore[attr-defined,unused-ignore]
