"""One self-contained HTML page telling a cross-validation's or an evaluation's story.

Everything is read from the files the run wrote (`summary.json` and the folds' outputs, or
`metrics.json` and its pictures); pictures are embedded as data URIs and nothing is fetched,
so the page opens from disk anywhere. Sections: provenance, leaderboard with intervals and
paired differences, per-fold table, learning curves, confusion matrices and ROC curves,
importance charts, and a gallery of every tile's prediction with its scores (worst first,
sortable).
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import subprocess
from pathlib import Path
from typing import Any

from src.atomic import atomic_path
from src.evaluation.comparison import METRICS_FILE
from src.evaluation.cv_record import SUMMARY_FILE, CVRecordError, read_json
from src.visualization.figure_output import find_figure

REPORT_FILE = "report.html"
PAIR_COLUMNS = ["pair", "difference", "95 % interval", "interval includes 0", "per fold",
                "p (folds)"]  # fmt: skip
SCORES = ("f1_class1", "f1_macro", "iou_macro", "accuracy")
STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 8px;
text-align:right}th{background:#f2f2f2;cursor:pointer}td:first-child,th:first-child{text-align:left}
img{max-width:100%}.gallery{display:flex;flex-wrap:wrap;gap:12px}.tile{width:420px;
border:1px solid #ddd;padding:6px}.warn{color:#b00;font-weight:bold}pre{background:#f7f7f7;
padding:8px;overflow:auto;max-height:300px}
"""
SORT_SCRIPT = """
function sortGallery(key, ascending){const g=document.getElementById('gallery');
[...g.children].sort((a,b)=>(parseFloat(a.dataset[key])-parseFloat(b.dataset[key]))*(ascending?1:-1))
.forEach(e=>g.appendChild(e));}
window.addEventListener('load',()=>{const imgs=[...document.images];
document.body.dataset.imagesLoaded=imgs.filter(i=>i.complete&&i.naturalWidth>0).length+'/'+imgs.length;});
"""


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
    return "" if not interval else f"[{interval[0]:.4f}, {interval[1]:.4f}]"


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


def _pairs_section(pairs: list[dict[str, Any]]) -> str:
    if not pairs:
        return ""
    rows = []
    for pair in pairs:
        folds = pair.get("folds")
        rows.append([
            f"{pair['first']} − {pair['second']}", pair["difference"], _interval(pair["interval"]),
            "yes" if pair["includes_zero"] else "no",
            "" if folds is None else f"{folds['mean']:+.4f} ± {folds['std']:.4f}",
            "" if folds is None else f"{folds['p_value']:.3f}",
        ])  # fmt: skip
    return (
        "<h2>Paired differences of f1_class1</h2><p>Same tiles, same folds; 95 % paired "
        "bootstrap interval over tiles; per-fold mean ± std with the corrected resampled t-test "
        "(Nadeau &amp; Bengio 2003).</p>" + _table(PAIR_COLUMNS, rows, "pairs")
    )


def _gallery(entries: list[tuple[dict[str, Any], Path]]) -> str:
    """Every labelled tile that has a picture, with its scores, worst class-1 F1 first."""
    entries = sorted(
        (e for e in entries if find_figure(e[1]) is not None),
        key=lambda e: e[0].get("f1_class1", 0.0),
    )
    cards = []
    for tile, picture in entries:
        scores = " · ".join(f"{k} {tile[k]:.3f}" for k in SCORES if k in tile)
        data = " ".join(f'data-{k.replace("_", "")}="{tile[k]:.6f}"' for k in SCORES if k in tile)
        cards.append(
            f'<div class="tile" {data}><b>{html.escape(tile["tile"])}</b>'
            f"{' (' + html.escape(str(tile['model'])) + ')' if 'model' in tile else ''}"
            f"<br>{scores}<br>{_image(picture, tile['tile'])}</div>"
        )
    return (
        "<h2>Tiles</h2><p>Sort: "
        "<button onclick=\"sortGallery('f1class1', true)\">f1_class1, worst first</button> "
        "<button onclick=\"sortGallery('f1class1', false)\">best first</button> "
        "<button onclick=\"sortGallery('accuracy', true)\">accuracy, worst first</button></p>"
        f'<div class="gallery" id="gallery">{"".join(cards)}</div>'
    )


def _importance(folder: Path) -> str:
    formats = (".png", ".svg", ".pdf")
    charts = sorted(p for p in folder.rglob("importance_*.*") if p.suffix in formats)
    if not charts:
        return ""
    return "<h2>Permutation importance</h2>" + "".join(
        f"<p>{html.escape(str(chart.relative_to(folder)))}</p>{_image(chart, chart.stem)}"
        for chart in charts
    )


def _cv_page(root: Path) -> tuple[str, str]:
    summary = read_json(root / SUMMARY_FILE)
    plan, models = summary["plan"], summary["models"]
    title = f"Cross-validation {root.name}"
    warning = (
        f'<p class="warn">OPTIMISTIC: {html.escape(summary["selection_rule"])}</p>'
        if summary.get("optimistic")
        else f"<p>Selection: {html.escape(summary['selection_rule'])}</p>"
    )
    provenance = _table(["item", "value"], [
        ["data fingerprint", plan["data_fingerprint"]], ["processed data", plan["processed_dir"]],
        ["split seed", plan["seed"]], ["folds", len(plan["folds"])],
        ["test tiles (not used)", ", ".join(plan["test"]) or "none"],
        ["configuration hash", plan["configuration_hash"]], ["code version", code_version()],
        ["bootstrap", json.dumps(summary.get("bootstrap"))],
    ])  # fmt: skip
    configuration = html.escape(json.dumps(plan["configuration"], indent=1))
    leaderboard = _table(
        ["model", "mean f1_class1", "std", "OOF f1_class1", "OOF 95 % interval", "OOF f1_macro",
         "OOF accuracy"],
        [[m["name"], m["mean"]["f1_class1"], m["std"]["f1_class1"],
          m["out_of_fold"]["f1_class1"],
          _interval((m.get("out_of_fold_interval") or {}).get("f1_class1")),
          m["out_of_fold"]["f1_macro"], m["out_of_fold"]["accuracy"]] for m in models],
        "leaderboard",
    )  # fmt: skip
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
            f"<h3>{html.escape(model['name'])}</h3>"
            + _image(folder / "learning_curves.png", "learning curves")
            + _image(folder / "oof" / "confusion_matrix.png", "confusion matrix")
            + _image(folder / "oof" / "roc_curves.png", "ROC curves")
        )
        for tile in model.get("out_of_fold_tiles", []):
            tiles = folder / f"fold_{tile['fold']}" / "predictions" / "tiles"
            picture = tiles / f"{tile['tile']}.png"
            gallery.append(({**tile, "model": model["name"]}, picture))
    body = (
        f"<h1>{html.escape(title)}</h1>{warning}<h2>Provenance</h2>{provenance}"
        f"<details><summary>configuration</summary><pre>{configuration}</pre></details>"
        f"<h2>Leaderboard</h2>{leaderboard}{_pairs_section(summary.get('pairs', []))}"
        f"<h2>Folds</h2>{folds}<h2>Learning curves, confusion matrices, ROC (out of fold)</h2>"
        + "".join(figures)
        + _importance(root)
        + _gallery(gallery)
    )
    return title, body


def _evaluation_page(folder: Path) -> tuple[str, str]:
    metrics = read_json(folder / METRICS_FILE)
    title = (
        f"Evaluation of {metrics.get('model_type')} {metrics.get('run')} on {metrics.get('split')}"
    )
    data = metrics.get("data", {})
    provenance = _table(["item", "value"], [
        ["checkpoint(s)", metrics.get("model_path")], ["epoch", metrics.get("epoch")],
        ["training data fingerprint", data.get("training_data_fingerprint")],
        ["processed data", data.get("processed_dir")], ["split", metrics.get("split")],
        ["tiles scored", ", ".join(metrics.get("tiles_scored", []))],
        ["TTA / restitch", f"{metrics.get('tta')} / {metrics.get('restitch')}"],
        ["code version", code_version()], ["bootstrap", json.dumps(metrics.get("bootstrap"))],
    ])  # fmt: skip
    body = f"<h1>{html.escape(title)}</h1><h2>Provenance</h2>{provenance}"
    overall = metrics.get("overall")
    if overall:
        interval = metrics.get("overall_interval") or {}
        body += "<h2>Scores</h2>" + _table(
            ["score", "value", "95 % interval over tiles"],
            [[k, overall[k], _interval(interval.get(k))] for k in SCORES], "leaderboard"
        ) + _image(folder / "confusion_matrix.png", "confusion matrix") + _image(
            folder / "roc_curves.png", "ROC curves"
        )  # fmt: skip
    else:
        body += "<p>No labelled tiles: predictions only.</p>"
    tiles = [t for t in metrics.get("tiles", []) if "f1_class1" in t]
    body += _importance(folder) + _gallery(
        [(t, folder / "tiles" / f"{t['tile']}.png") for t in tiles]
    )
    return title, body


def write_report(folder: Path) -> Path:
    """Write `<folder>/report.html` for a cross-validation or an evaluation's results."""
    folder = Path(folder)
    if (folder / SUMMARY_FILE).is_file():
        title, body = _cv_page(folder)
    elif (folder / METRICS_FILE).is_file():
        title, body = _evaluation_page(folder)
    else:
        raise CVRecordError(
            f"{folder} holds neither a finished cross-validation ({SUMMARY_FILE}) nor an "
            f"evaluation ({METRICS_FILE}): pass a folder of scripts.cross_validate or "
            f"scripts.evaluate"
        )
    written = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    page = (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}'
        f"</title><style>{STYLE}</style><script>{SORT_SCRIPT}</script></head><body>{body}"
        f"<p><small>written {written} by esd {code_version()} from {html.escape(str(folder))}"
        f"</small></p></body></html>"
    )
    target = folder / REPORT_FILE
    with atomic_path(target) as temporary:
        temporary.write_text(page, encoding="utf-8")
    return target
