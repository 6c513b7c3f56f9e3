"""Storage keys (``gcache.urns``): the URN grammar, its escaping, readable and injective."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gcache.keys import GCacheKey
from gcache.urns import ID_ESCAPES, entity_key, escape_id, owned_by, value_key, watermark_key

# ---------------------------------------------------------------------------------------------
# Rendered keys
# ---------------------------------------------------------------------------------------------


def test_urn_without_args_is_entity_then_use_case() -> None:
    key = GCacheKey(key_type="user_id", id="123", use_case="GetUser")
    assert key.urn == "{urn:gcache:user_id:123}#GetUser"
    assert key.prefix == "{urn:gcache:user_id:123}"
    assert key.watermark_key == "{urn:gcache:user_id:123}#watermark"
    assert str(key) == key.urn


def test_urn_with_args_renders_them_sorted_by_name() -> None:
    key = GCacheKey("user_id", "123", "GetUser", args=[("region", "eu"), ("limit", "10"), ("b", "x")])
    assert key.args == (("b", "x"), ("limit", "10"), ("region", "eu"))
    assert key.urn == "{urn:gcache:user_id:123}?b=x&limit=10&region=eu#GetUser"


def test_urn_escapes_colons_in_id() -> None:
    # ':' in an id is escaped so a cache whose prefix extends another's never shares its keys
    key = GCacheKey("doc", "tenant:42", "Render")
    assert key.urn == "{urn:gcache:doc:tenant%3A42}#Render"


def test_urn_differs_between_prefixes_that_extend_each_other() -> None:
    short = GCacheKey("tenant", "x:y", "UC", urn_prefix="app")
    long = GCacheKey("x", "y", "UC", urn_prefix="app:tenant")
    assert short.urn != long.urn
    assert short.watermark_key != long.watermark_key
    assert owned_by(short.urn, "app") is True
    assert owned_by(short.urn, "app:tenant") is False
    assert owned_by(long.urn, "app:tenant") is True
    assert owned_by(long.urn, "app") is False
    assert owned_by(long.watermark_key, "app:tenant") is True
    assert owned_by(short.watermark_key, "app") is True
    assert owned_by("{other:t:1}#UC", "app") is False


def test_urn_uses_custom_prefix_when_given() -> None:
    key = GCacheKey("user", "1", "UC", urn_prefix="svc:cache")
    assert key.urn == "{svc:cache:user:1}#UC"
    assert key.watermark_key == "{svc:cache:user:1}#watermark"


@pytest.mark.parametrize(
    ("key_type", "id", "args", "use_case", "expected"),
    [
        # key_type: ':' would end it early, so it is escaped; '#', '?', '&', '=' are harmless there
        ("a:b", "1", (), "UC", "{urn:gcache:a%3Ab:1}#UC"),
        ("t#?&=", "1", (), "UC", "{urn:gcache:t#?&=:1}#UC"),
        # id: only braces (and '%') are escaped
        ("t", "x}y{z", (), "UC", "{urn:gcache:t:x%7Dy%7Bz}#UC"),
        ("t", "50%", (), "UC", "{urn:gcache:t:50%25}#UC"),
        ("t", "a?b=c&d#e", (), "UC", "{urn:gcache:t:a?b=c&d#e}#UC"),
        # arg names escape '=', '&', '#'; values escape '&' and '#' but keep '='
        ("t", "1", (("a=b", "x=y"),), "UC", "{urn:gcache:t:1}?a%3Db=x=y#UC"),
        ("t", "1", (("n", "p&q#r"),), "UC", "{urn:gcache:t:1}?n=p%26q%23r#UC"),
        ("t", "1", (("n&#", "v:?"),), "UC", "{urn:gcache:t:1}?n%26%23=v:?#UC"),
        ("t", "1", (("n", "{}%"),), "UC", "{urn:gcache:t:1}?n=%7B%7D%25#UC"),
        # use_case is the rest of the key: only braces and '%' are escaped
        ("t", "1", (), "uc#1?x&y=z:w", "{urn:gcache:t:1}#uc#1?x&y=z:w"),
        ("t", "1", (), "{uc}%", "{urn:gcache:t:1}#%7Buc%7D%25"),
        # unicode stays as it is
        ("ユーザー", "é", (("ключ", "值"),), "Получить", "{urn:gcache:ユーザー:é}?ключ=值#Получить"),
    ],
)
def test_urn_escapes_delimiters_only_where_ambiguous(
    key_type: str, id: str, args: tuple[tuple[str, str], ...], use_case: str, expected: str
) -> None:
    assert GCacheKey(key_type, id, use_case, args=args).urn == expected


def test_module_functions_render_the_same_grammar() -> None:
    entity = entity_key("urn:gcache", "user_id", "7")
    assert entity == "{urn:gcache:user_id:7}"
    assert value_key(entity, (("a", "1"),), "UC") == "{urn:gcache:user_id:7}?a=1#UC"
    assert value_key(entity, (), "UC") == "{urn:gcache:user_id:7}#UC"
    assert watermark_key(entity) == "{urn:gcache:user_id:7}#watermark"


# ---------------------------------------------------------------------------------------------
# Property: different components never render to the same key; the hash tag stays intact
# ---------------------------------------------------------------------------------------------

_DELIMS = "{}:?&=#%"
# Strings made mostly of the grammar's delimiters (so near-collisions are explored), plain unicode,
# and mixtures of both.
_delim_text = st.text(st.sampled_from(_DELIMS + "ab"), max_size=5)
_unicode_text = st.text(max_size=5)
_text = st.one_of(_delim_text, _unicode_text, st.builds(str.__add__, _delim_text, _unicode_text))
_nonempty = st.builds(str.__add__, st.sampled_from(_DELIMS + "aéユ"), _text)
_use_case = _nonempty.filter(lambda s: s != "watermark")
_args = st.dictionaries(_text, _text, max_size=3)

Components = tuple[str, str, tuple[tuple[str, str], ...], str]


def _components(key_type: str, id: str, args: dict[str, str], use_case: str) -> Components:
    return (key_type, id, tuple(sorted(args.items())), use_case)


_component_tuples = st.builds(_components, _nonempty, _text, _args, _use_case)


def _shifted_pairs(x: str, y: str, z: str, w: str, which: int) -> tuple[Components, Components]:
    """Two different component tuples whose *unescaped* renderings are the same string.

    Each moves text across one delimiter of the grammar (or spells a delimiter as its %XX code),
    so only correct escaping keeps their keys apart.
    """
    kt, uc = "t" + x, "u" + w
    pairs: list[tuple[Components, Components]] = [
        # ':' between key_type and id
        ((kt + ":" + y, z, (), uc), (kt, y + ":" + z, (), uc)),
        # '}' / '{' ending the entity part
        ((kt, y + "}#" + z, (), uc), (kt, y, (), z + "}#" + uc)),
        ((kt, y + "}?" + z + "=" + w + "#x", (), uc), (kt, y, ((z, w),), "x}#" + uc)),
        # '=' between name and value
        ((kt, "1", ((y + "=" + z, w),), uc), (kt, "1", ((y, z + "=" + w),), uc)),
        # '&' between arguments (names sorted 'a...' < 'b...')
        ((kt, "1", (("a" + y, z + "&b" + w + "=" + x),), uc), (kt, "1", (("a" + y, z), ("b" + w, x)), uc)),
        ((kt, "1", (("a" + y + "=" + z + "&b" + w, x),), uc), (kt, "1", (("a" + y, z), ("b" + w, x)), uc)),
        # '#' between the arguments and the use case
        ((kt, "1", ((y, z + "#" + w),), uc), (kt, "1", ((y, z),), w + "#" + uc)),
        # no arguments vs one argument with an empty name and value
        ((kt, y, (), uc), (kt, y, (("", ""),), uc)),
        # '%XX' spelled out vs the delimiter it encodes
        ((kt, y + "%7D" + z, (), uc), (kt, y + "}" + z, (), uc)),
        ((kt, y + "%7B" + z, (), uc), (kt, y + "{" + z, (), uc)),
        ((kt + "%3A" + y, z, (), uc), (kt + ":" + y, z, (), uc)),
        ((kt, y + "%3A" + z, (), uc), (kt, y + ":" + z, (), uc)),
        ((kt, "1", ((y + "%3D" + z, w),), uc), (kt, "1", ((y + "=" + z, w),), uc)),
        ((kt, "1", ((y, z + "%26" + w),), uc), (kt, "1", ((y, z + "&" + w),), uc)),
        ((kt, "1", (), uc + "%7B"), (kt, "1", (), uc + "{")),
    ]
    a, b = pairs[which]
    return (a[0], a[1], tuple(sorted(a[2])), a[3]), (b[0], b[1], tuple(sorted(b[2])), b[3])


_near_collisions = st.builds(
    _shifted_pairs, _text, _text, _text, _text, st.integers(min_value=0, max_value=14)
).filter(lambda p: "watermark" not in (p[0][3], p[1][3]))


def _key(c: Components) -> GCacheKey:
    return GCacheKey(c[0], c[1], c[3], args=c[2])


def _assert_hash_tag_intact(rendered: str, entity: str) -> None:
    assert rendered.count("{") == 1
    assert rendered.count("}") == 1
    assert rendered[0] == "{"
    assert rendered.index("{") < rendered.index("}")
    assert rendered.startswith(entity)
    assert entity.endswith("}")


@settings(max_examples=150)
@given(st.lists(_component_tuples, min_size=2, max_size=5))
def test_urn_is_injective_for_different_components(drawn: list[Components]) -> None:
    components = list(dict.fromkeys(drawn))  # the distinct tuples
    keys = [_key(c) for c in components]
    urns = [k.urn for k in keys]
    assert len(set(urns)) == len(components)
    watermarks = {k.watermark_key for k in keys}
    assert not watermarks & set(urns)
    # one watermark per entity, and different entities never share one
    entities = {(kt, id) for kt, id, _args, _uc in components}
    assert len(watermarks) == len(entities)


@settings(max_examples=300)
@given(_near_collisions)
def test_urn_is_injective_when_text_moves_across_a_delimiter(pair: tuple[Components, Components]) -> None:
    a, b = pair
    assert (_key(a).urn == _key(b).urn) == (a == b)
    assert (_key(a).prefix == _key(b).prefix) == (a[:2] == b[:2])


@settings(max_examples=200)
@given(_component_tuples)
def test_urn_keeps_exactly_one_hash_tag_first(components: Components) -> None:
    key = _key(components)
    _assert_hash_tag_intact(key.urn, key.prefix)
    _assert_hash_tag_intact(key.watermark_key, key.prefix)


_prefix = st.text(st.sampled_from("ab:.-_/"), min_size=1, max_size=6)


@settings(max_examples=100)
@given(_prefix, _prefix, _component_tuples, _component_tuples)
def test_urn_never_shared_between_different_prefixes(p1: str, p2: str, a: Components, b: Components) -> None:
    key_a = GCacheKey(a[0], a[1], a[3], args=a[2], urn_prefix=p1)
    key_b = GCacheKey(b[0], b[1], b[3], args=b[2], urn_prefix=p2)
    assert owned_by(key_a.urn, p1)
    assert owned_by(key_a.watermark_key, p1)
    if p1 != p2:
        assert key_a.urn != key_b.urn
        assert key_a.prefix != key_b.prefix
        assert not owned_by(key_a.urn, p2)
        assert not owned_by(key_a.watermark_key, p2)


@given(st.text(alphabet=st.sampled_from("ab1%{}:&#=é日"), max_size=12) | st.text(max_size=12))
def test_escape_id_is_the_id_escapes_translation_whatever_the_id(id: str) -> None:
    """The shortcut for ids without delimiters changes no key: every path renders ids alike."""
    escaped = escape_id(id)
    assert escaped == id.translate(ID_ESCAPES)
    assert entity_key("p", "t", id) == "{p:t:" + escaped + "}"
    assert (escaped is id) == (id.translate(ID_ESCAPES) == id)  # no delimiter: the same object


def test_the_delimiters_tested_before_escaping_are_the_id_escapes_table() -> None:
    """escape_id and the read-through's wrappers (usecase.wrap) test these four characters
    inline: a delimiter added to the table without them would leave ids unescaped there."""
    assert {chr(c) for c in ID_ESCAPES} == set("%{}:")
