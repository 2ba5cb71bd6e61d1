"""The `workbench` command (placeholder until the CLI lands)."""


def main() -> None:
    print("workbench")
