"""Config files are data: only OmegaConf resolvers that cannot import or run code stay registered.

omegaconf 2.4 registers ``oc.coerce``, which imports any module named in a config value
(``${oc.coerce:some.module.X,1}`` runs ``some/module.py``); it is removed. The project itself only uses
``oc.env``. A resolver that a future module registers must be added to :data:`SAFE_RESOLVERS` on purpose.
"""

from __future__ import annotations

from omegaconf import OmegaConf

SAFE_RESOLVERS: frozenset[str] = frozenset(
    {"oc.env", "oc.create", "oc.decode", "oc.deprecated", "oc.select", "oc.dict.keys", "oc.dict.values"}
)


def registered_resolvers() -> set[str]:
    """Names of the resolvers OmegaConf currently knows (its registry has no public listing)."""
    from omegaconf.basecontainer import BaseContainer

    return set(BaseContainer._resolvers)


def harden_resolvers() -> None:
    """Unregister every resolver outside :data:`SAFE_RESOLVERS`."""
    for name in registered_resolvers() - SAFE_RESOLVERS:
        OmegaConf.clear_resolver(name)
