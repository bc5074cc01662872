import pytest

from guardstream.contracts.topics import CATALOGUE, SPECS, Topic, TopicNames

pytestmark = pytest.mark.unit


def test_every_topic_is_catalogued_once() -> None:
    assert {spec.topic for spec in CATALOGUE} == set(Topic)
    assert len(CATALOGUE) == len(SPECS)


def test_namespaces_keep_topics_apart() -> None:
    assert TopicNames()[Topic.POSTS] == "posts.v1"
    assert TopicNames("t1")[Topic.POSTS] == "t1.posts.v1"
    assert set(TopicNames("t1").all().values()).isdisjoint(TopicNames("t2").all().values())


def test_specs_are_sane() -> None:
    for spec in CATALOGUE:
        assert spec.partitions >= 1
        assert int(spec.config()["retention.ms"]) > 0
