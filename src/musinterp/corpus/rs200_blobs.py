"""Git blob ids of the RS200 harmony files (Rolling Stone 200 corpus of Trevor de Clercq and David
Temperley, v2.1, CC BY 4.0) in the public repository danigb/rock-corpus at commit :data:`COMMIT`.

Facts about the published files, used to verify every download (:func:`musinterp.io.fetch` with
``kind="git_blob"``); the files themselves are not part of this project. The table is
``rs200_blobs.tsv`` beside this module (``kind``, ``name``, ``git_blob``); a file lives at
``<folder>/<name>`` in that repository, the folders being :data:`FOLDERS`.
"""

import csv
from pathlib import Path

COMMIT = "89a09601638a0c74219e20a190415745e99b0d49"
REPOSITORY = "danigb/rock-corpus"
# kind -> folder in the repository
FOLDERS = {"harmony": "source/data/rs200_harmony", "harmony_exp": "source/data/rs200_harmony_exp"}


def _read_table() -> dict[str, dict[str, str]]:
    blobs: dict[str, dict[str, str]] = {kind: {} for kind in FOLDERS}
    with open(Path(__file__).with_name("rs200_blobs.tsv"), newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            blobs[row["kind"]][row["name"]] = row["git_blob"]
    return blobs


BLOBS = _read_table()
HARMONY = BLOBS["harmony"]  # source/data/rs200_harmony/<name>: 400 files
HARMONY_EXP = BLOBS["harmony_exp"]  # source/data/rs200_harmony_exp/<name>: 400 files
