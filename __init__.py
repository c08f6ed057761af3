"""signstream: sign language video to glosses, fast and measured.

Subpackages: ``signstream.loaders`` (shard reading and decoding),
``signstream.models`` (backbones, CTC head, decoding), ``signstream.recipes``
(``accelerate launch`` scripts), ``signstream.tools`` (packing, synthetic
corpus, evaluation, the ``signstream`` CLI) and ``signstream.benchmarks``.
"""

__version__ = "0.1.0"


class SignstreamError(Exception):
    """A user-facing error: bad input, missing file, bad option.

    The CLI prints its message on one line (no traceback) and exits with 2.
    Messages name the file, key or row at fault.
    """


def lookup(table: dict, name: str, what: str):
    """Return ``table[name]``; an unknown name is a :class:`SignstreamError` listing the choices.

    The one look-up by name, for the registries users extend (backbones, loader
    backends, feature writers, heads) and for every fixed choice (normalisation
    presets, temporal windows, pad modes, bad-sample handlers, corpus adapters,
    gloss cleanups, synthetic layouts), which are plain dicts:
    ``lookup(BACKENDS, "pyav", "loader backend")``.
    """
    try:
        return table[name]
    except (KeyError, TypeError):
        raise SignstreamError(f"unknown {what} {name!r}; choose from {', '.join(sorted(map(str, table)))}") from None
