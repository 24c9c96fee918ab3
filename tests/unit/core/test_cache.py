"""`short_key_cache`: keys of a sane length are cached, longer ones computed every time."""

from __future__ import annotations

from bastion._cache import short_key_cache


def test_short_keys_are_cached_and_long_ones_computed_each_time() -> None:
    calls: list[str] = []

    @short_key_cache(max_key=8, maxsize=4)
    def length(key: str) -> int:
        """How long `key` is."""
        calls.append(key)
        return len(key)

    assert [length("abc"), length("abc")] == [3, 3]
    assert calls == ["abc"]
    long = "x" * 9
    assert [length(long), length(long)] == [9, 9]
    assert calls == ["abc", long, long]
    assert length.cache_info().currsize == 1
    assert length.__doc__ == "How long `key` is."
    length.cache_clear()
    assert length.cache_info().currsize == 0
