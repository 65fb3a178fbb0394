"""Placeholder replaced by the export sub-commands."""

from samdeploy.cli.app import app


@app.command()
def inspect(path: str) -> None:
    """Print what a model package holds and verify its checksums."""
    from samdeploy.package import ModelPackage

    print(ModelPackage.load(path, verify=True).manifest["model_type"])
