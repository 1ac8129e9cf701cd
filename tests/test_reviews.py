import json

import pytest
from test_data import _naive_bayes_accuracy

from multimodaltransformer.data import DataError, read_manifest, reviews
from multimodaltransformer.data.reviews import sentiment
from multimodaltransformer.data.sources import parse_spec, resolve_source


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("text,label", [
    ("the big red circle was wonderful", "positive"),
    ("i hated the square", "negative"),
    ("the blue diamond was not bad", "positive"),             # negation flips
    ("the blue diamond was not good", "negative"),
    ("i did not like the blue square at all", "negative"),
    ("i never hated that cross", "positive"),
    ("the circle was not very good", "negative"),             # intensifiers change nothing
    ("the circle was extremely good", "positive"),
    ("i expected to hate the green cross but it was great", "positive"),  # "A but B": B decides
    ("i loved the green cross but it was not good", "negative"),
    ("the square looked ugly, although i thought it would be nice", "negative"),  # "A, although B": A
    ("although the square looked ugly, i loved it", "positive"),  # "although B, A": A
    ("although i did not like it, the square was not bad", "positive"),
])
def test_label_rules(text, label):
    assert sentiment(text) == label


def test_sentence_without_sentiment_word_is_an_error():
    with pytest.raises(ValueError, match="no sentiment word"):
        sentiment("the red circle was there")


def test_reviews_are_deterministic_balanced_and_labelled_by_rule(tmp_path):
    a = reviews.generate(tmp_path / "a", "train", n=301, seed=4, progress=False)
    assert a.read_text() == reviews.generate(tmp_path / "b", "train", n=301, seed=4, progress=False).read_text()
    rows = _rows(a)
    assert [r["target"] for r in rows].count("positive") == 150  # exactly half (n odd: one more negative)
    assert {r["review_type"] for r in rows} == {"plain", "negated", "contrast"}
    for r in rows:
        assert r["task"] == "sentiment" and r["prompt"] == reviews.PROMPT and r["split"] == "train"
        assert "image" not in r and sentiment(r["text"]) == r["target"]
    test = _rows(reviews.generate(tmp_path / "c", "test", n=301, seed=4, progress=False))
    assert len({r["text"] for r in test} & {r["text"] for r in rows}) < 30  # splits draw different reviews
    assert json.loads((tmp_path / "a" / "info.json").read_text())["dataset"] == "reviews"
    ex = read_manifest(a)[0]
    assert ex.image is None and ex.text == rows[0]["text"] and ex.target in ("positive", "negative")


def test_bag_of_words_falls_well_short(tmp_path):
    """The point of the dataset: word order decides, so unigram naive Bayes cannot reach 100%."""
    def data(split, n):
        return [(r["text"].replace(",", " ,").split(), r["target"])
                for r in _rows(reviews.generate(tmp_path / split, split, n=n, seed=0, progress=False))]

    acc = _naive_bayes_accuracy(data("train", 2000), data("test", 500))
    print(f"bag-of-words naive Bayes accuracy: {acc:.3f}")
    assert 0.6 < acc < 0.8  # above chance (plain reviews are easy), far below 100%


def test_reviews_spec_resolves_and_caches(tmp_path):
    assert parse_spec("reviews:split=val,n=5") == ("reviews", {"split": "val", "n": 5, "seed": 0})
    p = resolve_source("reviews:split=val,n=5,seed=1", tmp_path, progress=False)
    assert p.parent == tmp_path / "reviews" / "val-n5-seed1" and len(_rows(p)) == 5
    mtime = p.stat().st_mtime_ns
    assert resolve_source("reviews:split=val,n=5,seed=1", tmp_path, progress=False).stat().st_mtime_ns == mtime
    with pytest.raises(DataError, match="unknown split 'novel'"):
        resolve_source("reviews:split=novel", tmp_path)
    with pytest.raises(DataError, match="unknown key 'questions'"):
        resolve_source("reviews:questions=3", tmp_path)


def test_data_reviews_command(tmp_path, capsys):
    from multimodaltransformer.cli import main

    assert main(["data", "reviews", "--split", "val", "--n", "4", "--seed", "2", "--out", str(tmp_path)]) == 0
    assert "wrote" in capsys.readouterr().out and len(_rows(tmp_path / "manifest.jsonl")) == 4
