"""Write envs/musinterp.yaml (conda env for `snakemake --sdm conda`) from requirements.lock.

Run after changing the lock: `python envs/sync_from_lock.py`. A test checks they agree.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent


def render(lock_text: str) -> str:
    pins = [line.strip() for line in lock_text.splitlines() if line.strip() and not line.startswith("#")]
    lines = [
        "# Generated from requirements.lock by envs/sync_from_lock.py; do not edit by hand.",
        "name: musinterp",
        "channels:",
        "  - conda-forge",
        "dependencies:",
        "  - python=3.11",
        "  - pip",
        "  - pip:",
    ]
    return "\n".join(lines + [f"      - {pin}" for pin in pins]) + "\n"


if __name__ == "__main__":
    out = HERE / "musinterp.yaml"
    out.write_text(render((HERE.parent / "requirements.lock").read_text()))
    print(f"wrote {out}")
