"""report.json against its shipped JSON Schema: written reports validate, the validator rejects what the schema
forbids, and the README's table of top-level keys matches the schema."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from qmia_fast.results import report
from qmia_fast.errors import InputError
from qmia_fast.results.schema import validate

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    from qmia_fast.attack import QuantileAttack, synthetic_problem

    public = synthetic_problem(200, seed=0)
    evaluation = synthetic_problem(100, 100, seed=1)
    attack = QuantileAttack(n_models=3, seed=4, width=4, depth=1, head_width=8, epochs=2, batch_size=64)
    result = attack.fit(public.images, public.scores).predict(evaluation.images, evaluation.scores)
    built, arrays = report.report_from_attack(
        attack, result, evaluation.labels, raw_scores=evaluation.scores,
        config={"spec": {"seed": 4}, "score": {"method": "loss", "t": 200}},
        extra={"sets": {"members": 100, "public": 200, "holdout": 100}})
    folder = tmp_path_factory.mktemp("report")
    report.write_report(folder, built, arrays, plots=False)
    return json.loads((folder / "report.json").read_text())


def test_the_schema_ships_inside_the_package():
    import qmia_fast

    assert report.SCHEMA_PATH.is_file()
    assert Path(qmia_fast.__file__).parent in report.SCHEMA_PATH.parents
    schema = report.load_schema()
    assert schema["properties"]["version"]["const"] == report.REPORT_VERSION
    assert schema["properties"]["format"]["const"] == report.REPORT_FORMAT


def test_a_written_report_validates(written):
    report.validate_report(written)
    assert set(written["files"]) == {"scores.npz", "scores.csv", "scores.csv.json", "leakpro.json"}


def broken(written, change):
    document = copy.deepcopy(written)
    change(document)
    return document


@pytest.mark.parametrize("change, fragment", [
    (lambda d: d.pop("methods"), "missing required key 'methods'"),
    (lambda d: d.update(version=1), "must be 2"),
    (lambda d: d.update(surprise=True), "unexpected key 'surprise'"),
    (lambda d: d["methods"]["qmia_bag"].update(auc="high"), "report.json.methods.qmia_bag.auc"),
    (lambda d: d["methods"]["qmia_bag"].update(auc=1.5), "above the maximum"),
    (lambda d: d["methods"]["qmia_bag"]["operating_points"]["1%"].update(tp=True), "tp"),
    (lambda d: d["methods"]["qmia_bag"]["decision"].update(fpr_ci=[0.1]), "fpr_ci"),
    (lambda d: d["methods"]["qmia_bag"]["decision"].update(kind="guessed"), "kind"),
    (lambda d: d["files"]["scores.npz"].update(sha256="xyz"), "does not match"),
    (lambda d: d.update(n_members=0), "below the minimum"),
    (lambda d: d.update(warnings=[3]), "warnings[0]"),
])
def test_the_validator_rejects_what_the_schema_forbids(written, change, fragment):
    with pytest.raises(InputError, match=re.escape(fragment)):
        report.validate_report(broken(written, change))


def test_unsupported_schema_keywords_are_refused_not_ignored():
    with pytest.raises(InputError, match="unsupported keyword"):
        validate(1, {"type": "integer", "multipleOf": 2})


def test_readme_documents_every_top_level_key():
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Reports"):]
    section = section[:section.index("\n## ", 3)]
    documented = set(re.findall(r"^\| `([a-z_0-9]+)` \|", section, flags=re.MULTILINE))
    assert documented == set(report.load_schema()["properties"])
