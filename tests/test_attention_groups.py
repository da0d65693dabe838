"""Which sequences of a step attend together (pure integer arithmetic)."""

import random

import pytest

from adaserve.models.attention import group_sequences, num_padded_kv


@pytest.mark.parametrize(
    "shapes,min_waste,expected",
    [
        # the docstring's example: a prefill chunk alone, decodes together
        ([(512, 512), (1, 700), (1, 650), (1, 90)], 16384, [[0], [1, 2, 3]]),
        # same shapes always group; order in a group is the batch order
        ([(1, 100), (1, 100), (1, 100)], 0, [[0, 1, 2]]),
        # trees of 16 over similar contexts group, a much longer context splits off without slack
        ([(16, 1000), (16, 1010), (16, 4000)], 0, [[2], [0, 1]]),
        ([(16, 1000), (16, 1010), (16, 4000)], 10**9, [[0, 1, 2]]),
        ([(3, 10)], 0, [[0]]),
        ([], 0, []),
    ],
)
def test_group_sequences(shapes, min_waste, expected):
    assert sorted(group_sequences(shapes, min_waste)) == sorted(expected)


def test_every_sequence_in_exactly_one_group():
    shapes = [(q, kv) for q in (1, 2, 7, 64, 300) for kv in (q, q + 50, q + 2000)]
    groups = group_sequences(shapes)
    assert sorted(i for g in groups for i in g) == list(range(len(shapes)))


@pytest.mark.parametrize(
    "shapes, expected",
    [
        ([(512, 512), (1, 700), (1, 650), (1, 90)], 660),  # the docstring's example: decodes pad to 700
        ([(1, 300)], 0),  # alone: reads its cache in place
        ([(1, 300)] * 4, 0),  # equal lengths pad nothing
        ([(1, 400), (1, 300)], 100),
        ([(8, 1000), (1, 20)], 0),  # too unlike to share a group
    ],
)
def test_num_padded_kv(shapes, expected):
    assert num_padded_kv(shapes) == expected


def test_num_padded_kv_is_the_padding_of_group_sequences_groups():
    rng = random.Random(0)
    for _ in range(200):
        shapes = [
            (q, q + rng.randrange(0, 3000))
            for q in (rng.choice([1, 1, 4, 16, 300]) for _ in range(rng.randrange(1, 30)))
        ]
        groups = [[shapes[i][1] for i in g] for g in group_sequences(shapes)]
        assert num_padded_kv(shapes) == sum(max(kvs) * len(kvs) - sum(kvs) for kvs in groups)
