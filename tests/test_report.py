"""Reports on two tiny runs: ``emofast compare`` and the run's own report; their numbers against metrics.json, their
bytes run to run, and report.html opened in a real headless browser (Debian's Chromium)."""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys

import pytest
import tiny
from test_workflow import write_pairs

from emofast.cli import main
from emofast.report import compare, write_run_report

WORDS = {
    "fear": ["trembled", "dark stairs", "footsteps", "scream", "locked in"],
    "confidence": ["stood tall", "sure", "strong voice", "ready", "nailed it"],
    "anxious": ["worried", "racing heart", "what if", "deadline", "restless"],
    "relaxed": ["hammock", "warm bath", "slow morning", "nap", "easy"],
    "sad": ["tears", "grey", "alone", "lost", "quiet room"],
    "happy": ["sun", "laughed", "party", "won", "danced"],
}
PAIRS = (("fear", "confidence"), ("anxious", "relaxed"), ("sad", "happy"))
CHROMIUM = "/usr/bin/chromium"
PNG_URI = "data:image/png;base64,"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run A: three pairs, neutral set, shuffled baselines, the default report. Run B, of the same model: two of
    the pairs, no neutral set, no shuffled baselines, cosine scoring, mean-diff directions, no report."""
    base = tmp_path_factory.mktemp("report")
    tiny.model("llama").save_pretrained(base / "model")
    tiny.tokenizer().save_pretrained(base / "model")
    write_pairs(base / "data", PAIRS, words=WORDS)
    common = ["--model", str(base / "model"), "--pairs", str(base / "data"), "--no-progress", "--n-boot", "100"]
    common += ["--width", "2"]
    a, b = base / "run_a", base / "run_b"
    assert main(["run", *common, "--out", str(a)]) == 0
    only = ["--pair", "fear_vs_confidence", "--pair", "anxious_vs_relaxed"]
    extra = ["--neutral", "none", "--shuffled", "0", "--score", "cosine", "--method", "mean-diff", "--no-report"]
    assert main(["run", *common, "--out", str(b), *only, *extra]) == 0
    return a, b


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "report"
    assert main(["compare", *map(str, runs), "--out", str(out)]) == 0
    return out


def metrics_of(run) -> dict:
    return json.loads((run / "metrics.json").read_text())


def label_of(run) -> str:
    """Both runs are of the same model, so the report tells them apart by their folder."""
    return f"{metrics_of(run)['model']} [{run.name}]"


def read_csv(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def md_tables(text: str) -> list[list[dict]]:
    """Every Markdown table of a document, as rows of ``{header: cell}``."""
    tables, block = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            cells = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in block]
            tables.append([dict(zip(cells[0], row)) for row in cells[2:]])
            block = []
    return tables


def md_table(tables, *columns) -> list[dict]:
    """The first table that has all these columns."""
    for t in tables:
        if t and all(c in t[0] for c in columns):
            return t
    raise AssertionError(f"no table with columns {columns}")


def ci3(m: dict) -> str:
    return f"{m['value']:.3f} [{m['ci95'][0]:.3f}, {m['ci95'][1]:.3f}]"


def pct(v, lo, hi) -> str:
    return f"{v:.1f} [{lo:.1f}, {hi:.1f}]"


def expected_profile(m: dict) -> dict:
    """``{(pair, label): (test %, own side %, neutral %)}`` formatted as the report prints them, from metrics.json."""
    out = {}
    for left, right in m["probe"]["pairs"]:
        pair = f"{left}_vs_{right}"
        t = m["pairs_test"][pair]
        bal, neu = t["mean_p_left"], m.get("neutral", {}).get(pair, {}).get("mean_p_left")
        for label, own, flip in ((left, t["mean_p_left_on_left"], False), (right, t["mean_p_right_on_right"], True)):
            f = (lambda v: 100 * (1 - v)) if flip else (lambda v: 100 * v)
            test = (f(bal["value"]), *sorted(map(f, bal["ci95"])))
            neutral = pct(f(neu["value"]), *sorted(map(f, neu["ci95"]))) if neu else "n/a"
            out[pair, label] = (test, pct(100 * own["value"], *(100 * v for v in own["ci95"])), neutral)
    return out


def test_compare_writes_every_file(report):
    for name in ("report.html", "report.md", "profile.csv", "pairs.csv", "controls.csv", "cross_reading.csv"):
        assert (report / name).is_file(), name
    assert (report / "direction_cosines.csv").is_file()
    md = (report / "report.md").read_text()
    linked = re.findall(r"!\[.*\]\((figures/[^)]+\.png)\)", md)
    assert len(linked) >= 10 and len(set(linked)) == len(linked)
    for link in linked:
        assert (report / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", link
    html = (report / "report.html").read_text()
    assert html.count(f'<img src="{PNG_URI}') == len(linked)
    for heading in ("Emotion profile", "Top 3 labels", "Layers", "Calibration", "Related pairs", "Polarity swap"):
        assert heading in md and heading in html, heading


def test_report_numbers_equal_the_metrics(runs, report):
    md = (report / "report.md").read_text()
    tables = md_tables(md)
    profile = md_table(tables, "model", "label", "test % [95% CI]", "own side % [95% CI]", "neutral % [95% CI]")
    pairs = md_table(tables, "model", "pair", "balanced accuracy", "AUROC", "layers")
    glance = md_table(tables, "model", "mean balanced accuracy", "shuffled-label accuracy", "polarity-swap deviation")
    top3 = md_table(tables, "model", "1st", "2nd", "3rd", "left sides in top 3")
    scoring = md_table(tables, "model", "pair", "centered: balanced accuracy", "cosine: balanced accuracy")
    related = md_table(tables, "model", "A's direction on B's texts", "B's direction on A's texts")
    gap = md_table(tables, "model", "pair", "train - test (descriptive)", "shuffled mean")
    perm = md_table(tables, "model", "pair", "permutation p", "Holm")
    centred = md_table(tables, "model", "pair", "centred - cosine [95% CI]")
    seen = left_top = n_top = lean_left = lean_right = 0
    for run in runs:
        m, label = metrics_of(run), label_of(run)
        expect = expected_profile(m)
        rows = [r for r in profile if r["model"] == label]
        assert len(rows) == len(expect) == 2 * len(m["pairs_test"])
        csv_rows = {(r["pair"], r["label"]): r for r in read_csv(run / "profile.csv")}
        for r in rows:
            test, own, neutral = expect[r["pair"], r["label"]]
            assert (r["test % [95% CI]"], r["own side % [95% CI]"], r["neutral % [95% CI]"]) == (
                pct(*test),
                own,
                neutral,
            )
            # the run's profile.csv holds the same numbers, rounded to 2 decimals
            assert float(csv_rows[r["pair"], r["label"]]["pct_test"]) == pytest.approx(test[0], abs=0.006)
        ranked = sorted(expect, key=lambda k: -expect[k][0][0])[:3]
        (row,) = [r for r in top3 if r["model"] == label]
        assert [row[k].split(" (")[0] for k in ("1st", "2nd", "3rd")] == [lab for _, lab in ranked]
        assert row["1st"].endswith(pct(*expect[ranked[0]][0]))
        lefts = [(f"{left}_vs_{right}", left) for left, right in m["probe"]["pairs"]]
        left_top, n_top = left_top + sum(k in lefts for k in ranked), n_top + len(ranked)
        lean_left += sum(expect[k][0][1] > 50 for k in lefts)
        lean_right += sum(expect[k][0][2] < 50 for k in lefts)
        for name, t in m["pairs_test"].items():
            (r,) = [r for r in pairs if r["model"] == label and r["pair"] == name]
            assert (r["balanced accuracy"], r["AUROC"]) == (ci3(t["balanced_accuracy"]), ci3(t["auroc"]))
            layers = m["summary"]["chosen_layers"][name]
            assert r["layers"] == f"{layers[0]}-{layers[-1]}"
            (r,) = [r for r in scoring if r["model"] == label and r["pair"] == name]
            assert r["cosine: balanced accuracy"] == ci3(m["controls"]["scoring"]["cosine"]["per_pair"][name])
            assert r["used"] == m["probe"]["score"]
            (r,) = [r for r in gap if r["model"] == label and r["pair"] == name]
            train = m["pairs_train"][name]["balanced_accuracy"]["value"]
            g = m["controls"]["train_test"][name]
            assert g["value"] == pytest.approx(train - t["balanced_accuracy"]["value"], abs=2e-6)
            assert r["train - test (descriptive)"] == f"{g['value']:+.3f}"
            assert "ci95" not in g and m["controls"]["train_test"]["interval"] is None  # in-sample train: no interval
            (r2,) = [r for r in perm if r["model"] == label and r["pair"] == name]
            assert r2["permutation p"] == f"{t['permutation_p']:.2g}" and r2["Holm"] == f"{t['permutation_p_holm']:.2g}"
            assert 1 / 10_001 - 1e-9 <= t["permutation_p"] <= t["permutation_p_holm"] <= 1
            d = m["controls"]["centered_minus_cosine"][name]
            (r3,) = [r for r in centred if r["model"] == label and r["pair"] == name]
            assert r3["centred - cosine [95% CI]"] == f"{d['value']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
            sh = m["controls"].get("shuffled_labels")
            assert r["shuffled mean"] == (
                f"{sum(sh['balanced_accuracy'][name]) / len(sh['seeds']):.3f}" if sh else "n/a"
            )
        (g,) = [r for r in glance if r["model"] == label]
        assert g["mean balanced accuracy"] == f"{m['summary']['mean_balanced_accuracy']:.3f}"
        sh = m["controls"].get("shuffled_labels")
        assert g["shuffled-label accuracy"] == (f"{sh['mean_balanced_accuracy']:.3f}" if sh else "n/a")
        assert g["polarity-swap deviation"] == f"{m['controls']['polarity_swap']['max_abs_deviation']:.2e}"
        cr = m["cross_reading_test"]
        (r,) = [r for r in related if r["model"] == label]
        auc = {(d, t): v for d, row in zip(cr["directions"], cr["auroc"]) for t, v in zip(cr["texts"], row)}
        assert r["A's direction on B's texts"] == f"{auc['fear_vs_confidence', 'anxious_vs_relaxed']:.3f}"
        assert r["B's direction on A's texts"] == f"{auc['anxious_vs_relaxed', 'fear_vs_confidence']:.3f}"
        dc = m["direction_cosines"]
        i, j = dc["pairs"].index("fear_vs_confidence"), dc["pairs"].index("anxious_vs_relaxed")
        assert r["cosine"] == f"{dc['cosine'][i][j]:.3f}"
        seen += 1
    assert seen == 2
    assert "Polarity swap (software self-test, not evidence)" in md
    assert "Evidence (each can come out against the probe)" in md
    versus = md_table(tables, "pair", "model A", "model B", "A - B [95% CI]")
    both = set(metrics_of(runs[0])["pairs_test"]) & set(metrics_of(runs[1])["pairs_test"])
    assert {r["pair"] for r in versus} == both
    assert f"left sides among the top-3 labels: {left_top} of {n_top} " in md
    assert f"interval: {lean_left} to the left side, {lean_right} to the right side." in md


def test_report_csvs_equal_the_runs(runs, report):
    a, b = runs
    for name in ("profile.csv", "pairs.csv"):
        combined = read_csv(report / name)
        expect = [{"run": label_of(run), **row} for run in runs for row in read_csv(run / name)]
        assert [{k: v for k, v in row.items() if v != ""} for row in combined] == expect, name
    assert "neutral_mean_p_left" not in read_csv(b / "pairs.csv")[0]  # run B has no neutral set: left blank
    controls = read_csv(report / "controls.csv")
    cross = read_csv(report / "cross_reading.csv")
    cosines = read_csv(report / "direction_cosines.csv")
    for run in runs:
        m, label = metrics_of(run), label_of(run)
        mine = {r["pair"]: r for r in controls if r["run"] == label}
        assert set(mine) == set(m["pairs_test"])
        for name, r in mine.items():
            cos = m["controls"]["scoring"]["cosine"]["per_pair"][name]["value"]
            assert float(r["cosine_balanced_accuracy"]) == cos
            assert float(r["polarity_swap_max_abs_deviation"]) == m["controls"]["polarity_swap"]["max_abs_deviation"]
            neutral = m.get("neutral", {}).get(name)
            assert r["neutral_mean_p_left"] == (str(neutral["mean_p_left"]["value"]) if neutral else "")
            sh = m["controls"].get("shuffled_labels")
            assert r["shuffled_seeds"] == (" ".join(map(str, sh["seeds"])) if sh else "")
        cr = m["cross_reading_test"]
        got = {(r["direction"], r["texts"]): float(r["auroc"]) for r in cross if r["run"] == label}
        assert got == {(d, t): v for d, row in zip(cr["directions"], cr["auroc"]) for t, v in zip(cr["texts"], row)}
        dc = m["direction_cosines"]
        got = {(r["pair_a"], r["pair_b"]): float(r["cosine"]) for r in cosines if r["run"] == label}
        assert got == {(x, y): v for x, row in zip(dc["pairs"], dc["cosine"]) for y, v in zip(dc["pairs"], row)}


def test_same_runs_same_bytes(runs, report, tmp_path):
    again = compare(list(runs), tmp_path / "again")
    assert again == tmp_path / "again"
    files = sorted(p.relative_to(report) for p in report.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for f in files:
        assert (report / f).read_bytes() == (again / f).read_bytes(), f


def test_run_writes_its_own_report(runs, tmp_path):
    a, b = runs
    assert (a / "report.html").is_file() and (a / "report.md").is_file()
    assert not (b / "report.html").exists()  # --no-report
    copy = shutil.copytree(b, tmp_path / "b")
    before = {p.name: p.read_bytes() for p in copy.iterdir()}
    assert write_run_report(copy) == copy / "report.html"
    for name, data in before.items():
        assert (copy / name).read_bytes() == data, name  # the run's own files are left alone
    assert {p.name for p in copy.iterdir()} - set(before) == {"report.html", "report.md", "figures"}
    md = (copy / "report.md").read_text()
    assert md.splitlines()[0] == f"# emofast run report: {metrics_of(b)['model']}"
    assert "Without a neutral set" in md and "Without shuffled-label baselines" in md
    for link in re.findall(r"\]\((figures/[^)]+)\)", md):
        assert (copy / link).is_file(), link


def test_report_opens_offline_in_a_real_browser(report, tmp_path):
    if not shutil.which(CHROMIUM):
        pytest.fail(
            f"{CHROMIUM} not found: this test opens report.html in a real browser; install Debian's Chromium with "
            "'apt-get install -y chromium' (scripts/test.sh does)"
        )
    html = (report / "report.html").read_text()
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]+)""", html, flags=re.I)
    assert refs and all(r.startswith(PNG_URI) or r.startswith("#") for r in refs), [r[:60] for r in refs]
    assert not re.search(r"https?://|<script|<link|@import|url\(", html, flags=re.I)
    n_img = html.count("<img ")
    # After load: every image complete, of a real size, and decoded to its last row (the figures are opaque, so a
    # truncated or corrupt PNG leaves transparent pixels there).
    probe = (
        "<script>window.addEventListener('load', function () {"
        "var im = Array.from(document.images);"
        "var ok = im.filter(function (i) {"
        "  if (!i.complete || i.naturalWidth < 100) return false;"
        "  var c = document.createElement('canvas'); c.width = i.naturalWidth; c.height = i.naturalHeight;"
        "  var g = c.getContext('2d'); g.drawImage(i, 0, 0);"
        "  var px = g.getImageData(0, c.height - 1, c.width, 1).data;"
        "  for (var k = 3; k < px.length; k += 4) { if (px[k] !== 255) return false; }"
        "  return true; }).length;"
        "document.title = 'images ' + ok + ' of ' + im.length; });</script>"
    )
    page = tmp_path / "page.html"
    page.write_text(html.replace("</body>", probe + "</body>"))
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"]
    flags += ["--disable-background-networking", "--disable-component-update", "--disable-sync"]
    cmd = [CHROMIUM, *flags, f"--user-data-dir={profile}", "--dump-dom", "--virtual-time-budget=10000"]
    done = subprocess.run([*cmd, page.as_uri()], capture_output=True, text=True, timeout=120)
    title = re.search(r"<title>(.*?)</title>", done.stdout)
    assert title, f"chromium gave no page (rc {done.returncode}): {done.stderr[-2000:]}"
    assert title.group(1) == f"images {n_img} of {n_img}" and n_img >= 10


def test_not_a_run_folder_is_a_clear_error(runs, tmp_path, capsys):
    empty = tmp_path / "not_a_run"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=f"{re.escape(str(empty))}: not an emofast run folder"):
        compare([runs[0], empty], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert main(["compare", str(empty), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert str(empty) in err and "no metrics.json" in err
    with pytest.raises(ValueError, match="is a run folder"):  # would overwrite the run's own CSVs
        compare([runs[0]], runs[1])


def test_reports_leave_matplotlib_alone(runs, tmp_path):
    """``import emofast.report`` imports no matplotlib; writing a report neither imports pyplot nor changes the
    caller's matplotlib settings."""
    code = (
        "import sys, pathlib, emofast, emofast.report\n"
        "assert 'matplotlib' not in sys.modules\n"
        "import matplotlib\n"
        "matplotlib.rcParams['font.size'] = 13.0\n"
        f"emofast.report.compare([pathlib.Path({str(runs[1])!r})], pathlib.Path({str(tmp_path / 'r')!r}))\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "assert matplotlib.rcParams['font.size'] == 13.0\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "r" / "report.html").is_file()
