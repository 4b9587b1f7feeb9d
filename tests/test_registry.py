import pytest

from dfgan.registry import FUSIONS, Registry, RegistryError


def test_register_and_build():
    reg = Registry("thing")

    @reg.register("a", provides={"words"})
    def make_a(x):
        """An A."""
        return ("a", x)

    assert reg.build("a", 3) == ("a", 3)
    assert reg.entry("a").provides == frozenset({"words"})
    assert reg.entry("a").summary == "An A."
    assert "a" in reg and reg.names() == ["a"] and len(reg) == 1


def test_duplicate_rejected():
    reg = Registry("thing")
    reg.add("a", lambda: 1)
    with pytest.raises(RegistryError, match="'a' is already registered"):
        reg.add("a", lambda: 2)


def test_unknown_lists_choices():
    reg = Registry("fusion")
    reg.add("dfblock", lambda: 1)
    reg.add("concat", lambda: 2)
    with pytest.raises(RegistryError) as e:
        reg.get("dfblok")
    assert "unknown fusion 'dfblok'" in str(e.value)
    assert "concat, dfblock" in str(e.value)


def test_real_registries_populated():
    import dfgan.experiment  # noqa: F401

    assert "dfblock" in FUSIONS
