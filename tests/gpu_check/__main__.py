"""``python -m tests.gpu_check``: a missing package is one sentence (exit 2), not a traceback."""

import sys


def main() -> int:
    try:
        from .cli import cli
    except ModuleNotFoundError as error:
        name = (error.name or "?").split(".")[0]
        if name in ("probes", "analyses", "figures", "tests"):
            how = "run it from the repository root with PYTHONPATH=."
        else:
            how = "install it there, or carry its wheel to the device machine"
        sys.stderr.write(f"error: the GPU check needs the Python package {name!r}, which "
                         f"{sys.executable} cannot import; {how}.\n")
        return 2
    return cli()


if __name__ == "__main__":
    sys.exit(main())
