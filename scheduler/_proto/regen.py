"""Regenerate the bindings in this package from ``protos/orchestrator_service.proto`` and those of
Dapr's fork (``scheduler/_proto/dapr/``) from ``protos/dapr/orchestrator_service.proto``.

Usage (from any directory)::

    python -m scheduler._proto.regen

Needs ``grpcio-tools`` (pinned in the ``test`` extra); the output depends on its
version, so always regenerate with the pinned one.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

PKG_DIR = Path(__file__).resolve().parent
REPO_ROOT = PKG_DIR.parent.parent
PROTO_DIR = REPO_ROOT / "protos"
# protoc sees the .proto under this virtual path, so the generated grpc module
# imports ``scheduler._proto.orchestrator_service_pb2`` instead of a top-level module.
VIRTUAL_DIR = "scheduler/_proto"
PROTO = f"{VIRTUAL_DIR}/orchestrator_service.proto"
# (proto directory, virtual directory = the package of its bindings) of each contract served
CONTRACTS = ((PROTO_DIR, VIRTUAL_DIR), (PROTO_DIR / "dapr", f"{VIRTUAL_DIR}/dapr"))
GENERATED = (
    "orchestrator_service_pb2.py",
    "orchestrator_service_pb2.pyi",
    "orchestrator_service_pb2_grpc.py",
)


def generate(out_dir: str | Path, proto_dir: Path = PROTO_DIR, virtual_dir: str = VIRTUAL_DIR) -> dict[str, Path]:
    """Run protoc on ``proto_dir``/orchestrator_service.proto into ``out_dir``; return {file name: generated
    path}."""
    from grpc_tools import protoc

    out = Path(out_dir)
    well_known = resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{virtual_dir}={proto_dir}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        f"{virtual_dir}/orchestrator_service.proto",
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return {name: out / virtual_dir / name for name in GENERATED}


def main() -> int:
    for proto_dir, virtual_dir in CONTRACTS:
        with tempfile.TemporaryDirectory() as tmp:
            for name, path in generate(tmp, proto_dir, virtual_dir).items():
                target = REPO_ROOT / virtual_dir / name
                shutil.copyfile(path, target)
                print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
