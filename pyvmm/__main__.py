"""`pyvmm` (the console script) and `python -m pyvmm`."""

import gc


def main() -> None:
    gc.disable()  # while the command starts: pyvmm.cli.collector turns it back on
    from pyvmm.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
