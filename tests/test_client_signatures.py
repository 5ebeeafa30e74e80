"""The public signatures of GanClient and AsyncGanClient: every keyword named, typed and
documented (the API reference is generated from these docstrings), and the same in both
clients, so IDEs, help() and type checkers see what a method takes."""

from __future__ import annotations

import collections.abc
import inspect
import os
import re
import typing
from collections.abc import Callable

import pytest

from ganserve.clients import AsyncGanClient, GanClient

# The async client's context-manager methods are __aenter__/__aexit__.
_LIFECYCLE = {"__enter__", "__exit__", "__aenter__", "__aexit__"}


def public_methods(cls: type) -> dict[str, Callable[..., object]]:
    methods = {
        name: member
        for name, member in inspect.getmembers(cls, callable)
        if not name.startswith("_") and not isinstance(member, type)
    }
    methods["__init__"] = cls.__init__  # type: ignore[misc]
    return methods


def documented_args(method: Callable[..., object]) -> set[str]:
    """The names in the Google-style ``Args:`` section of ``method``'s docstring."""
    doc = inspect.getdoc(method) or ""
    section = re.search(r"^Args:\n((?:(?: {4}.*)?\n)+)", doc + "\n", re.MULTILINE)
    if section is None:
        return set()
    return set(re.findall(r"^ {4}(\w+):", section.group(1), re.MULTILINE))


def parameters(method: Callable[..., object]) -> list[inspect.Parameter]:
    return [p for p in inspect.signature(method).parameters.values() if p.name != "self"]


def test_both_clients_have_the_same_public_methods() -> None:
    assert set(public_methods(GanClient)) == set(public_methods(AsyncGanClient))
    assert {"get_model", "model_info", "sample", "sample_stream"} <= set(public_methods(GanClient))


@pytest.mark.parametrize("name", sorted(public_methods(GanClient)))
def test_the_same_signature_in_both_clients(name: str) -> None:
    sync, aio = public_methods(GanClient)[name], public_methods(AsyncGanClient)[name]
    assert parameters(sync) == parameters(aio)  # names, kinds, defaults, annotations
    expect_coroutine = name not in ("__init__", "sample_stream")
    assert inspect.iscoroutinefunction(aio) == expect_coroutine
    assert not inspect.iscoroutinefunction(sync)


@pytest.mark.parametrize("cls", [GanClient, AsyncGanClient])
@pytest.mark.parametrize("name", sorted(public_methods(GanClient)))
def test_every_keyword_is_named_typed_and_documented(cls: type, name: str) -> None:
    method = public_methods(cls)[name]
    params = parameters(method)
    kinds = {p.kind for p in params}
    assert inspect.Parameter.VAR_KEYWORD not in kinds, f"{name} takes **kwargs"
    assert inspect.Parameter.VAR_POSITIONAL not in kinds, f"{name} takes *args"
    untyped = [p.name for p in params if p.annotation is inspect.Parameter.empty]
    assert not untyped, f"{name}: no type hint for {untyped}"
    assert inspect.signature(method).return_annotation is not inspect.Parameter.empty
    assert documented_args(method) == {p.name for p in params}, name


@pytest.mark.parametrize("cls", [GanClient, AsyncGanClient])
def test_sampling_options_are_keyword_only(cls: type) -> None:
    for name in ("sample", "sample_stream"):
        params = {p.name: p for p in parameters(getattr(cls, name))}
        assert [n for n, p in params.items() if p.kind != p.KEYWORD_ONLY] == ["model", "count"]
        assert {"seed", "latents", "labels", "label", "truncation", "encoding",
                "return_latents", "chunk_size", "version", "timeout"} <= set(params)  # fmt: skip
    assert "progress" in {p.name for p in parameters(cls.sample)}


def test_a_misspelt_keyword_is_pythons_own_type_error() -> None:
    # Nothing is sent: the channel connects lazily and the call fails at binding.
    with GanClient("127.0.0.1:1", retries=0) as client:
        with pytest.raises(TypeError, match="unexpected keyword argument 'lables'"):
            client.sample("m", 2, lables=[1, 2])  # type: ignore[call-arg]
        with pytest.raises(TypeError, match="unexpected keyword argument 'labels'"):
            client.arithmetic("m", [(1.0, 1)], labels=[1])  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'timout'"):
        GanClient("127.0.0.1:1", timout=3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'lable'"):
        AsyncGanClient("127.0.0.1:1").sample("m", 2, lable=1)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("cls", "generator"),
    [(GanClient, collections.abc.Generator), (AsyncGanClient, collections.abc.AsyncGenerator)],
)
def test_sample_stream_is_typed_as_the_generator_it_returns(cls: type, generator: type) -> None:
    """It was typed ``Iterator`` / ``AsyncIterator``, so the ``close()`` / ``aclose()``
    the docs ask for failed a type check."""
    hint = typing.get_type_hints(cls.sample_stream)["return"]
    assert typing.get_origin(hint) is generator
    client = cls("127.0.0.1:1", retries=0)
    stream = client.sample_stream("m", 2)  # nothing is sent before the first chunk is asked
    assert isinstance(stream, generator)
    if cls is GanClient:  # the async client opens its channel at the first call
        stream.close()
        client.close()


def test_tls_files_are_typed_as_paths_too() -> None:
    """``tls_ca``, ``tls_cert`` and ``tls_key`` were typed ``str`` though a ``Path`` works."""
    hints = typing.get_type_hints(GanClient.__init__)
    for name in ("tls_ca", "tls_cert", "tls_key"):
        assert os.PathLike[str] in typing.get_args(hints[name]), name
