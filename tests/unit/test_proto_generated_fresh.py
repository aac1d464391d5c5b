"""The committed scheduler/_proto bindings must match what the .proto generates."""

from __future__ import annotations

import difflib
from importlib import metadata

import pytest

from scheduler._proto import regen


@pytest.mark.parametrize("contract", regen.CONTRACTS, ids=lambda c: str(c[1]) if isinstance(c, tuple) else c)
@pytest.mark.parametrize("name", regen.GENERATED)
def test_generated_file_is_fresh(name: str, contract, tmp_path) -> None:
    proto_dir, virtual_dir = contract
    fresh = regen.generate(tmp_path, proto_dir, virtual_dir)[name].read_text()
    committed_path = regen.REPO_ROOT / virtual_dir / name
    assert committed_path.exists(), (
        f"{committed_path} is missing; regenerate with: python -m scheduler._proto.regen"
    )
    committed = committed_path.read_text()
    if fresh != committed:
        diff = "".join(
            list(
                difflib.unified_diff(
                    committed.splitlines(keepends=True),
                    fresh.splitlines(keepends=True),
                    fromfile=f"committed/{name}",
                    tofile=f"regenerated/{name}",
                    n=1,
                )
            )[:60]
        )
        pytest.fail(
            f"{virtual_dir}/{name} is stale relative to its .proto under {proto_dir}.\n"
            f"Regenerate with: python -m scheduler._proto.regen "
            f"(using the pinned grpcio-tools; installed: {metadata.version('grpcio-tools')}).\n"
            f"First lines of the diff:\n{diff}"
        )
