"""IdentityMemo: one value per live object, found by identity, bounded, never stale."""

from __future__ import annotations

from imageserver.memo import IdentityMemo


def test_equal_but_distinct_objects_get_their_own_value() -> None:
    made: list[object] = []
    memo: IdentityMemo[list[int], int] = IdentityMemo(lambda obj: made.append(obj) or len(made))
    first, twin = [1, 2], [1, 2]  # equal, unhashable
    assert memo(first) == 1
    assert memo(first) == 1  # found again, not made again
    assert memo(twin) == 2
    assert made == [first, twin]


def test_least_recently_used_goes_first() -> None:
    calls: list[str] = []
    memo: IdentityMemo[list[str], str] = IdentityMemo(lambda obj: calls.append(obj[0]) or obj[0], 2)
    a, b, c = ["a"], ["b"], ["c"]
    memo(a), memo(b), memo(a), memo(c)  # b is the least recently used when c arrives
    memo(a)
    memo(b)
    assert calls == ["a", "b", "c", "b"]


def test_an_entry_keeps_its_object_so_its_id_is_never_reused() -> None:
    memo: IdentityMemo[list[int], int] = IdentityMemo(len)
    assert memo([1, 2, 3]) == 3  # the temporary stays alive inside the memo
    assert memo([4]) == 1  # so this new list cannot share its id and get the stale 3
