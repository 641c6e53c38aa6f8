"""What lies under a folder: its training runs, cross-validations and sweeps (`scripts.runs`).

Each is found by the files it leaves (`find`): a run by its log folder (`status.json`,
`metrics.csv`, `hparams.yaml`) and its checkpoint folder (`*.ckpt`), a cross-validation by its
`folds.json`, a sweep by its Optuna study (`study.journal`, or an older `study.db`). The runs
inside a cross-validation or a sweep are part of it, not listed on their own. Each is listed
(`listing`) with its status, its main score (with the OPTIMISTIC label where the score's tiles
chose the model), what differs between the configurations of those of a kind (the options
that determine the result, `result_config`), and whether the processed folder it trained on
was rebuilt since: its manifest's fingerprint is no longer the one it trained on, the
manifest is gone, or, for a view of another folder's tiles (a fold's, a refit's, a student's
data), those tiles are no longer the recorded files.

Nothing is written: a listing never changes a run, a study or a processed folder.
"""

from src.run_listing.listing import Listing, format_listing, list_folder, listing_json

__all__ = ["Listing", "format_listing", "list_folder", "listing_json"]
