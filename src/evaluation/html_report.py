"""One self-contained HTML page telling the story of one or more runs, for a paper.

Everything is read from the files the runs wrote (a cross-validation's `summary.json` and
its folds' outputs, or one model of it; an evaluation's `metrics.json` and its pictures);
pictures are embedded as data URIs and nothing is fetched, so the page opens from disk
anywhere. With several folders the page starts with one leaderboard of every run, ordered by
the headline statistic (pooled class-1 F1, out of fold for a cross-validation), every score
with its 95 % interval over tiles and the tile count, and the paired differences of the runs
scored on the same tiles; then a section per folder: provenance, leaderboard, pairs, folds,
learning curves, confusion matrices and ROC curves, the ablation beside permutation
importance, and a gallery of every tile's prediction (worst first, sortable; unlabelled
tiles without scores). Scores whose tiles chose the model say OPTIMISTIC wherever they
appear. The leaderboard is also written as Markdown and LaTeX beside the page.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from src.atomic import atomic_path
from src.evaluation.comparison import (
    METRICS_FILE,
    PairingError,
    ScoredRun,
    compare_runs,
    format_pairs,
    load_scored_runs,
)
from src.evaluation.cv_record import SUMMARY_FILE, CVRecordError, read_json
from src.held_out import OPTIMISTIC
from src.visualization.figure_output import find_figure

REPORT_FILE = "report.html"
PAIR_COLUMNS = ["pair", "difference", "95 % interval (given the models)", "tiles",
                "per fold", "p (folds, Holm)", "verdict"]  # fmt: skip
SCORES = ("f1_class1", "f1_macro", "iou_macro", "accuracy")
TABLE_SCORES = ("f1_class1", "f1_class2", "f1_class3", "f1_class4", "f1_macro", "accuracy")
"""The leaderboard's columns in the Markdown and LaTeX tables: every class's F1 and two
averages, each with its interval."""
STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f2f2f2;cursor:pointer}td:first-child,th:first-child{text-align:left}
img{max-width:100%;height:auto}.gallery{display:flex;flex-wrap:wrap;gap:12px}.tile{width:420px;
border:1px solid #ddd;padding:6px}.warn{color:#b00;font-weight:bold}pre{background:#f7f7f7;
padding:8px;overflow:auto;max-height:300px}nav li{margin:.15em 0}
"""
SORT_SCRIPT = """
function sortGallery(id, key, ascending){const g=document.getElementById(id);
[...g.children].sort((a,b)=>(parseFloat(a.dataset[key])-parseFloat(b.dataset[key]))*(ascending?1:-1))
.forEach(e=>g.appendChild(e));}
window.addEventListener('load',()=>{const imgs=[...document.images];
document.body.dataset.imagesLoaded=imgs.filter(i=>i.complete&&i.naturalWidth>0).length+'/'+imgs.length;});
"""
ABLATION_VS_PERMUTATION = (
    "Permutation asks what this trained model relies on: scrambling a sensor it leaned on "
    "costs much, even when other sensors carry the same information. Ablation retrains "
    "without the sensor, so the model finds substitutes among the others: a small ablation "
    "cost beside a large permutation cost means the information is redundant, not useless."
)


def _image(path: Path, alt: str) -> str:
    """An <img> with the picture embedded, in whichever format it was written (nothing when
    there is none; a PDF, which a page cannot show inline, is named instead)."""
    found = find_figure(path)
    if found is None:
        return ""
    if found.suffix == ".pdf":
        return f"<p>{html.escape(alt)}: {html.escape(str(found))} (PDF)</p>"
    kind = "svg+xml" if found.suffix == ".svg" else "png"
    data = base64.b64encode(found.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/{kind};base64,{data}">'


def _table(header: list[str], rows: list[list[Any]], table_id: str = "") -> str:
    cells = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(value)}</td>" for value in row) + "</tr>" for row in rows
    )
    ident = f' id="{table_id}"' if table_id else ""
    return f"<table{ident}><tr>{cells}</tr>{body}</table>"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return html.escape(str(value))


def _interval(interval: list[float] | None) -> str:
    return "–" if not interval else f"[{interval[0]:.4f}, {interval[1]:.4f}]"


def _flag(optimistic: bool) -> str:
    return f" {OPTIMISTIC}" if optimistic else ""


def code_version() -> str:
    """The git commit of this code base (and `+changes` when the tree differs), or unknown."""
    here = Path(__file__).resolve().parent
    try:
        options = {"cwd": here, "text": True, "capture_output": True, "timeout": 10}
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=True, **options)
        status = ["git", "status", "--porcelain", "--untracked-files=no"]
        dirty = subprocess.run(status, check=False, **options).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return commit.stdout.strip() + ("+changes" if dirty else "")


# --------------------------------------------------------------------------------------------
# the leaderboard of every run


@dataclass(frozen=True)
class Row:
    """One leaderboard row: a run's name, headline scores with intervals and tile count."""

    name: str
    scores: dict[str, float]
    intervals: dict[str, list[float]]
    tiles: int
    optimistic: bool
    source: str


def _rows(folder: Path) -> list[Row]:
    """The leaderboard rows of a folder (none for unlabelled predictions)."""
    root, only = _cv_root(folder)
    if root is not None:
        summary = read_json(root / SUMMARY_FILE)
        return [
            Row(f"{root.name}/{m['name']}", m["out_of_fold"], m.get("out_of_fold_interval") or {},
                len(m["out_of_fold_tiles"]), bool(m["held_out"]["optimistic"]), str(root))
            for m in summary["models"] if only in (None, m["name"])
        ]  # fmt: skip
    metrics = read_json(folder / METRICS_FILE)
    if "overall" not in metrics:
        return []
    return [Row(f"{metrics['model_type']}/{metrics['run']} [{folder.name}]", metrics["overall"],
                metrics.get("overall_interval") or {}, len(metrics["tiles_scored"]),
                bool((metrics.get("held_out") or {}).get("optimistic")), str(folder))]  # fmt: skip


def _cv_root(folder: Path) -> tuple[Path | None, str | None]:
    """(the cross-validation's folder, the one model asked for) or (None, None)."""
    if (folder / SUMMARY_FILE).is_file():
        return folder, None
    if (folder.parent / SUMMARY_FILE).is_file():
        return folder.parent, folder.name
    return None, None


def _leaderboard_html(rows: list[Row]) -> str:
    header = ["run", *(f"{k} [95 % interval]" for k in SCORES), "tiles", "source"]
    body = [
        [row.name + _flag(row.optimistic),
         *(f"{row.scores[k]:.4f} {_interval(row.intervals.get(k))}" for k in SCORES),
         row.tiles, row.source]
        for row in rows
    ]  # fmt: skip
    return _table(header, body, "leaderboard")


def leaderboard_markdown(rows: list[Row]) -> str:
    """The leaderboard as a Markdown table: every class's F1 and the averages, with
    intervals and tile counts."""
    header = ["run", *TABLE_SCORES, "tiles"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [
            f"{row.scores[k]:.3f} [{row.intervals[k][0]:.3f}, {row.intervals[k][1]:.3f}]"
            if k in row.intervals else f"{row.scores.get(k, float('nan')):.3f}"
            for k in TABLE_SCORES
        ]  # fmt: skip
        lines.append(f"| {row.name}{_flag(row.optimistic)} | " + " | ".join(cells)
                     + f" | {row.tiles} |")  # fmt: skip
    return "\n".join(lines) + "\n" + _no_interval_note(rows)


def _no_interval_note(rows: list[Row]) -> str:
    """A footnote for the scores printed without an interval (too few tiles, or a class too
    few tiles hold), so a bare number is never read as certain."""
    bare = [row.name for row in rows if set(TABLE_SCORES) - set(row.intervals)]
    if not bare:
        return ""
    return (
        f"\nNo 95 % interval where a score stands alone ({', '.join(bare)}): fewer than 12 "
        f"tiles, or a class held by fewer than 4 of them.\n"
    )


def _latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"),
                          ("#", r"\#")):  # fmt: skip
        text = text.replace(char, escaped)
    return text


def leaderboard_latex(rows: list[Row]) -> str:
    """The leaderboard as a LaTeX tabular (booktabs): every class's F1 and the averages, the
    95 % interval under each score."""
    header = " & ".join(["run", *(_latex_escape(k) for k in TABLE_SCORES), "tiles"])
    lines = [
        r"\begin{tabular}{l" + "c" * len(TABLE_SCORES) + "r}", r"\toprule", header + r" \\",
        r"\midrule",
    ]  # fmt: skip
    for row in rows:
        cells = []
        for k in TABLE_SCORES:
            value = row.scores.get(k, float("nan"))
            interval = row.intervals.get(k)
            if interval is None:
                cells.append(f"{value:.3f}")
                continue
            low, high = interval
            cells.append(rf"\makecell{{{value:.3f}\\ \scriptsize[{low:.3f}, {high:.3f}]}}")
        name = _latex_escape(row.name) + (r" \textsuperscript{\dag}" if row.optimistic else "")
        lines.append(" & ".join([name, *cells, str(row.tiles)]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    if _no_interval_note(rows):
        lines.append("% " + _no_interval_note(rows).strip())
    if any(row.optimistic for row in rows):
        lines.append(r"% \dag: OPTIMISTIC, its scored tiles chose the model (epoch or settings)")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# one folder's section


def _pairs_section(pairs: list[dict[str, Any]]) -> str:
    if not pairs:
        return ""
    rows = []
    for pair in pairs:
        folds = pair.get("folds")
        rows.append([
            f"{pair['first']} − {pair['second']}", f"{pair['difference']:+.4f}",
            _interval(pair["interval"]), pair["tiles"],
            "" if folds is None else f"{folds['mean']:+.4f} ± {folds['std']:.4f}",
            "" if folds is None else f"{folds.get('p_holm', folds['p_value']):.3f}",
            pair["verdict"] + _flag(pair.get("optimistic", False)),
        ])  # fmt: skip
    return (
        "<h3>Paired differences of f1_class1</h3><p>Same tiles, same folds. The interval over "
        "tiles holds the two trained models fixed; a verdict needs the corrected resampled "
        "t-test over the trained folds (Nadeau &amp; Bengio 2003), Holm-corrected over the "
        "pairs, below 0.05.</p>" + _table(PAIR_COLUMNS, rows, "pairs")
    )


def _gallery(entries: list[tuple[dict[str, Any], Path]], ident: str) -> str:
    """Every tile that has a picture, with its scores (labelled tiles, worst class-1 F1
    first) or as a prediction only (unlabelled tiles)."""
    entries = sorted(
        (e for e in entries if find_figure(e[1]) is not None),
        key=lambda e: e[0].get("f1_class1", 2.0),
    )
    if not entries:
        return ""
    cards = []
    for tile, picture in entries:
        scores = " · ".join(f"{k} {tile[k]:.3f}" for k in SCORES if k in tile) or "unlabelled"
        data = " ".join(f'data-{k.replace("_", "")}="{tile[k]:.6f}"' for k in SCORES if k in tile)
        note = f" ({html.escape(str(tile['model']))})" if "model" in tile else ""
        flag = _flag(bool(tile.get("optimistic")))
        cards.append(
            f'<div class="tile" {data}><b>{html.escape(tile["tile"])}</b>{note}{flag}'
            f"<br>{scores}<br>{_image(picture, tile['tile'])}</div>"
        )
    buttons = "".join(
        f"<button onclick=\"sortGallery('{ident}', '{key}', {order})\">{label}</button> "
        for key, order, label in (("f1class1", "true", "f1_class1, worst first"),
                                  ("f1class1", "false", "best first"),
                                  ("accuracy", "true", "accuracy, worst first"))
    )  # fmt: skip
    return (
        f"<h3>Tiles</h3><p>Sort: {buttons}</p>"
        f'<div class="gallery" id="{ident}">{"".join(cards)}</div>'
    )


def _importance(folder: Path) -> str:
    """The importance charts under `folder` (each titled OPTIMISTIC when it is)."""
    formats = (".png", ".svg", ".pdf")
    charts = sorted(p for p in folder.rglob("importance_*.*") if p.suffix in formats)
    if not charts:
        return ""
    return "<h3>Permutation importance</h3>" + "".join(
        f"<p>{html.escape(str(chart.relative_to(folder)))}</p>{_image(chart, chart.stem)}"
        for chart in charts
    )


def _permutation_by_sensor(model_dir: Path) -> dict[str, dict[str, Any]]:
    """Sensor → its permutation drop of class-1 F1, from the newest importance result of
    this model's folds (`scripts.importance --cv_dir <cv>/<model>`)."""
    results = sorted(
        model_dir.glob("importance/*/importance.json"), key=lambda p: p.stat().st_mtime
    )
    if not results:
        return {}
    record = read_json(results[-1])
    return {
        row["group"]: {**row["f1_class1"], "optimistic": record["optimistic"]}
        for row in record.get("groupings", {}).get("sensor", [])
    }


def _cost(pair: dict[str, Any]) -> str:
    """What leaving a sensor out cost: the full model minus the variant (the pair is the
    variant minus the full model), its interval turned round with it."""
    interval = pair["interval"]
    turned = None if interval is None else [-interval[1], -interval[0]]
    return f"{-pair['difference']:+.4f} {_interval(turned)}"


def _ablation_table(root: Path, summary: dict[str, Any]) -> str:
    """Per full model, each left-out sensor's retrained cost beside its permutation cost (the
    model's own importance), one sentence on why they differ."""
    pairs = {p["first"]: p for p in summary.get("pairs", [])}
    rows = []
    for model in summary["models"]:
        name, reference = model["name"], model.get("reference")
        if reference is None or not name.startswith(f"{reference}-without-"):
            continue
        sensor = name.removeprefix(f"{reference}-without-")
        permuted = _permutation_by_sensor(root / reference).get(sensor)
        rows.append([
            reference, sensor, "" if name not in pairs else _cost(pairs[name]),
            "" if permuted is None
            else f"{permuted['drop']:+.4f} {_interval(permuted['interval'])}"
            + _flag(permuted["optimistic"]),
        ])  # fmt: skip
    if not rows:
        return ""
    return (
        "<h3>What each sensor is worth: retrained against permuted</h3>"
        f"<p>{ABLATION_VS_PERMUTATION}</p>"
        + _table(
            [
                "model",
                "sensor",
                "cost of leaving it out (retrained)",
                "cost of permuting it (this model)",
            ],
            rows,
            "ablation",
        )
    )


def _tile_cards(root: Path, model: dict[str, Any]) -> list[tuple[dict[str, Any], Path]]:
    """Each out-of-fold tile's scores beside the picture of the same prediction: of the first
    partition for repeated folds or seeds (their pooled scores have no one picture)."""
    folder = root / model["name"]
    sets = [p for p in sorted((folder / "oof").glob("repeat_*")) if p.is_dir()]
    tiles = model.get("out_of_fold_tiles", [])
    label = model["name"]
    if sets:
        tiles = read_json(sets[0] / METRICS_FILE)["tiles"]
        label += f", {sets[0].name} of {len(sets)} partitions"
    return [
        ({**tile, "model": label},
         folder / f"fold_{tile['fold']}" / "predictions" / "tiles" / f"{tile['tile']}.png")
        for tile in tiles
    ]  # fmt: skip


def _cv_section(root: Path, only: str | None, anchor: str) -> str:
    summary = read_json(root / SUMMARY_FILE)
    plan = summary["plan"]
    models = [m for m in summary["models"] if only in (None, m["name"])]
    title = f"Cross-validation {root.name}" + (f", model {only}" if only else "")
    reasons = sorted({m["held_out"]["reason"] for m in models if m["held_out"]["optimistic"]})
    warning = "".join(f'<p class="warn">{html.escape(r)}</p>' for r in reasons)
    warning += f"<p>Selection: {html.escape(summary['selection_rule'])}</p>"
    units = len(plan["folds"])
    provenance = _table(["item", "value"], [
        ["data fingerprint", plan["data_fingerprint"]], ["processed data", plan["processed_dir"]],
        ["split seed", plan["seed"]], ["trainings per model", units],
        ["repetitions × seeds", f"{plan.get('repeats', 1)} × {len(plan.get('seeds', [0]))}"],
        ["test tiles (used by no fold)", ", ".join(plan["test"]) or "none"],
        ["configuration hash", plan["configuration_hash"]], ["code version", code_version()],
        ["bootstrap", json.dumps(summary.get("bootstrap"))],
    ])  # fmt: skip
    configuration = html.escape(json.dumps(plan["configuration"], indent=1))
    pairs = [
        p for p in summary.get("pairs", []) if only is None or only in (p["first"], p["second"])
    ]
    folds = _table(
        ["model", "fold", "epoch", "held-out tiles", *SCORES],
        [[m["name"], f["fold"], f["selected_epoch"], ", ".join(f["val_tiles"]),
          *(f["scores"][k] for k in SCORES)] for m in models for f in m["folds"]],
        "folds",
    )  # fmt: skip
    figures, gallery = [], []
    for model in models:
        folder = root / model["name"]
        figures.append(
            f"<h4>{html.escape(model['name'])}</h4>"
            + _image(folder / "learning_curves.png", "learning curves")
            + _image(folder / "oof" / "confusion_matrix.png", "confusion matrix")
            + _image(folder / "oof" / "roc_curves.png", "ROC curves")
        )
        gallery += _tile_cards(root, model)
    importance = _importance(root if only is None else root / only)
    return (
        f'<h2 id="{anchor}">{html.escape(title)}</h2>{warning}<h3>Provenance</h3>{provenance}'
        f"<details><summary>configuration</summary><pre>{configuration}</pre></details>"
        + _image(root / "summary.png", "summary")
        + _pairs_section(pairs)
        + _ablation_table(root, summary)
        + f"<h3>Folds</h3>{folds}<h3>Learning curves, confusion matrices, ROC (out of fold)</h3>"
        + "".join(figures)
        + importance
        + _gallery(gallery, f"gallery-{anchor}")
    )


def _evaluation_section(folder: Path, anchor: str) -> str:
    metrics = read_json(folder / METRICS_FILE)
    title = (
        f"Evaluation of {metrics.get('model_type')} {metrics.get('run')} on {metrics.get('split')}"
    )
    held_out = metrics.get("held_out") or {}
    warning = (
        f'<p class="warn">{html.escape(held_out["reason"])}</p>'
        if held_out.get("optimistic")
        else f'<p class="warn">{held_out["label"]}: the model trained on these tiles</p>'
        if held_out.get("label")
        else ""
    )
    data = metrics.get("data", {})
    provenance = _table(["item", "value"], [
        ["checkpoint(s)", metrics.get("model_path")], ["epoch", metrics.get("epoch")],
        ["training data fingerprint", data.get("training_data_fingerprint")],
        ["processed data", data.get("processed_dir")], ["split", metrics.get("split")],
        ["tiles scored", ", ".join(metrics.get("tiles_scored", [])) or "none (unlabelled)"],
        ["tiles predicted", len(metrics.get("tiles_predicted", []))],
        ["TTA / restitch", f"{metrics.get('tta')} / {metrics.get('restitch')}"],
        ["code version", code_version()], ["bootstrap", json.dumps(metrics.get("bootstrap"))],
    ])  # fmt: skip
    body = f'<h2 id="{anchor}">{html.escape(title)}</h2>{warning}<h3>Provenance</h3>{provenance}'
    overall = metrics.get("overall")
    if overall:
        interval = metrics.get("overall_interval") or {}
        tiles = len(metrics["tiles_scored"])
        flag = _flag(bool(held_out.get("optimistic")))
        body += f"<h3>Scores ({tiles} tiles){flag}</h3>" + _table(
            ["score", "value", f"95 % interval over {tiles} tiles"],
            [[k, overall[k], _interval(interval.get(k))] for k in TABLE_SCORES], "scores"
        ) + _image(folder / "confusion_matrix.png", "confusion matrix") + _image(
            folder / "roc_curves.png", "ROC curves"
        )  # fmt: skip
        note = (metrics.get("bootstrap") or {}).get("note")
        body += f"<p>{html.escape(note)}</p>" if note else ""
        decision = metrics.get("decision")
        if decision:
            body += (
                f"<p>Decision: class 1 where its probability ≥ {decision['threshold']:.4f}, "
                f"chosen on {html.escape(decision['chosen_on'])}; class-1 F1 with the arg-max "
                f"instead: {decision['f1_class1_argmax']:.4f}.</p>"
            )
    else:
        body += "<p>No labelled tiles: predictions only.</p>"
    importance = _importance(folder)
    entries = [(t, folder / "tiles" / f"{t['tile']}.png") for t in metrics.get("tiles", [])]
    return body + importance + _gallery(entries, f"gallery-{anchor}")


# --------------------------------------------------------------------------------------------
# the page


def _check_folder(folder: Path) -> None:
    if _cv_root(folder)[0] is None and not (folder / METRICS_FILE).is_file():
        raise CVRecordError(
            f"{folder} holds neither a finished cross-validation ({SUMMARY_FILE}, or one model's "
            f"folder in it) nor an evaluation ({METRICS_FILE}): pass folders of "
            f"scripts.cross_validate or scripts.evaluate"
        )


def _comparison(folders: list[Path], resamples: int, seed: int) -> tuple[str, list[dict]]:
    """The paired differences of every two runs scored on the same tiles (the runs of
    other tiles are named, not paired)."""
    runs: list[ScoredRun] = []
    for folder in folders:
        try:
            runs += load_scored_runs(folder)
        except PairingError:
            continue  # unlabelled predictions: nothing to pair
    groups: dict[tuple[str, ...], list[ScoredRun]] = {}
    for run in runs:
        groups.setdefault(tuple(sorted(run.tiles)), []).append(run)
    pairs: list[dict[str, Any]] = []
    notes = []
    for group in groups.values():
        if len(group) > 1:
            try:
                pairs += compare_runs(group, resamples, seed)
            except PairingError as error:
                notes.append(str(error))
    if len(groups) > 1:
        notes.append(
            f"{len(groups)} sets of scored tiles: runs scored on other tiles are not paired"
        )
    text = "".join(f"<p>{html.escape(n)}</p>" for n in notes)
    if pairs:
        text += f"<pre>{html.escape(format_pairs(pairs))}</pre>"
    return text, pairs


def write_report(
    folders: list[Path], target: Path | None = None, resamples: int = 1000, seed: int = 0
) -> Path:
    """Write one page for `folders` (cross-validations, one model of one, evaluations) to
    `target` (default: `<folder>/report.html` for one folder), with the leaderboard also as
    `<target stem>_leaderboard.md` and `.tex`; returns the page's path."""
    folders = [Path(f) for f in folders]
    for folder in folders:
        _check_folder(folder)
    if target is None:
        if len(folders) > 1:
            raise ValueError("several folders make one report: name it with --out FILE.html")
        target = folders[0] / REPORT_FILE
    rows = sorted((row for f in folders for row in _rows(f)), key=lambda r: -r.scores["f1_class1"])
    sections, contents = [], []
    for index, folder in enumerate(folders):
        anchor = f"run-{index}"
        root, only = _cv_root(folder)
        sections.append(
            _cv_section(root, only, anchor) if root is not None
            else _evaluation_section(folder, anchor)
        )  # fmt: skip
        contents.append(f'<li><a href="#{anchor}">{html.escape(str(folder))}</a></li>')
    comparison, _ = _comparison(folders, resamples, seed) if len(folders) > 1 else ("", [])
    markdown, latex = leaderboard_markdown(rows), leaderboard_latex(rows)
    stem = target.with_suffix("")
    for suffix, text in (("_leaderboard.md", markdown), ("_leaderboard.tex", latex)):
        with atomic_path(Path(f"{stem}{suffix}")) as temporary:
            temporary.write_text(text, encoding="utf-8")
    title = "Results: " + ", ".join(f.name for f in folders)
    optimistic = any(row.optimistic for row in rows)
    body = (
        f"<h1>{html.escape(title)}</h1><nav><h2>Contents</h2><ol>"
        '<li><a href="#leaderboard-section">Leaderboard</a></li>' + "".join(contents)
        + '</ol></nav><h2 id="leaderboard-section">Leaderboard</h2><p>Ordered by the headline '
        "statistic: class-1 F1 of the pooled tiles (out of fold for a cross-validation). Every "
        "score with its 95 % interval over tiles (expanded percentile bootstrap; none below "
        "the tiles it needs).</p>"
        + (f'<p class="warn">{OPTIMISTIC}: the scored tiles chose that model (its epoch or '
           "settings): not a held-out score.</p>" if optimistic else "")
        + _leaderboard_html(rows) + comparison
        + f"<details><summary>Markdown</summary><pre>{html.escape(markdown)}</pre></details>"
        f"<details><summary>LaTeX (booktabs, makecell)</summary><pre>{html.escape(latex)}"
        "</pre></details>" + "".join(sections)
    )  # fmt: skip
    written = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}'
        f"</title><style>{STYLE}</style><script>{SORT_SCRIPT}</script></head><body>{body}"
        f"<p><small>written {written} by esd {code_version()} from "
        f"{html.escape(', '.join(map(str, folders)))}</small></p></body></html>"
    )
    with atomic_path(target) as temporary:
        temporary.write_text(page, encoding="utf-8")
    return target
