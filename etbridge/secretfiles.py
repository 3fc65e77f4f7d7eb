"""Secrets from files: ``NAME_FILE`` (the Docker/Kubernetes convention) and a secrets directory.

:class:`SecretLookup` finds a secret variable's value in layers of variables
(the process environment, then the ``.env`` file), where ``NAME_FILE`` names
a file holding the value (one trailing newline stripped), and then in
secrets directories (a file named like the variable, as pydantic-settings'
``secrets_dir`` reads it). It serves declared settings through
:class:`FileSecretSource` and dynamically named ones (``…_<NAME>``) through
:meth:`SecretLookup.names`. It reads files, never the environment itself:
``settings.py`` hands it the mappings.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource
from pydantic_settings.sources import SecretsSettingsSource

FILE_SUFFIX = "_FILE"


class SecretFileError(Exception):
    """A ``NAME_FILE`` that cannot be used; ``str()`` is one line naming the variable."""


def read_secret_file(variable: str, path: str) -> str:
    """The content of the file ``variable`` names, less one trailing newline."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise SecretFileError(f"{variable}: cannot read {path!r}: {reason}") from None
    if text.endswith("\r\n"):
        return text[:-2]
    return text.removesuffix("\n")


class SecretLookup:
    """Secret variables from layers of variables (highest first) and secrets directories.

    Names are matched case-insensitively, as the settings' environment is.
    Within one layer, ``NAME`` and ``NAME_FILE`` together are a mistake; a
    higher layer wins over a lower one, and every layer over the directories.
    """

    def __init__(
        self,
        layers: Sequence[Mapping[str, str | None]],
        secrets_dirs: Sequence[Path] = (),
    ) -> None:
        self.layers = [{k.lower(): v for k, v in layer.items()} for layer in layers]
        self.secrets_dirs = list(secrets_dirs)

    def get(self, name: str) -> str | None:
        """The value of secret variable ``name``, or None when it is given nowhere."""
        key, file_key = name.lower(), (name + FILE_SUFFIX).lower()
        for layer in self.layers:
            value, path = layer.get(key), layer.get(file_key)
            if path is not None and value is not None:
                raise SecretFileError(f"{name}{FILE_SUFFIX}: {name} is set too; set only one")
            if path is not None:
                return read_secret_file(name + FILE_SUFFIX, path)
            if value is not None:
                return value
        # Last directory wins, as in pydantic-settings' secrets_dir.
        for directory in reversed(self.secrets_dirs):
            found = SecretsSettingsSource.find_case_path(directory, name, case_sensitive=False)
            if found is not None and found.is_file():
                try:
                    return found.read_text(encoding="utf-8").strip()
                except (OSError, UnicodeDecodeError) as exc:
                    raise SecretFileError(f"{name}: cannot read {str(found)!r}: {exc}") from None
        return None

    def names(self, prefix: str) -> list[str]:
        """Every variable starting with ``prefix`` given here in any form (upper case, sorted)."""
        candidates = {k for layer in self.layers for k in layer}
        for directory in self.secrets_dirs:
            candidates.update(p.name.lower() for p in directory.iterdir() if p.is_file())
        found = set()
        for key in candidates:
            name = key.upper().removesuffix(FILE_SUFFIX)
            if name.startswith(prefix.upper()) and len(name) > len(prefix):
                found.add(name)
        return sorted(found)

    def values(self, prefix: str) -> dict[str, str]:
        """``{variable: value}`` for :meth:`names` (the ``NAME_FILE`` forms already read)."""
        out = {}
        for name in self.names(prefix):
            value = self.get(name)
            if value is not None:
                out[name] = value
        return out


class FileSecretSource(PydanticBaseSettingsSource):
    """A pydantic-settings source: the declared secret fields, read through a lookup."""

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        lookup: SecretLookup,
        variables: Mapping[str, str],
    ) -> None:
        super().__init__(settings_cls)
        self.lookup = lookup
        self.variables = dict(variables)  # field name -> its variable

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        variable = self.variables.get(field_name)
        value = self.lookup.get(variable) if variable else None
        return value, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for field_name in self.variables:
            info = self.settings_cls.model_fields[field_name]
            value, _, _ = self.get_field_value(info, field_name)
            if value is not None:
                # A field with an alias (SENTRY_DSN) is validated under that alias.
                alias = info.validation_alias
                out[alias if isinstance(alias, str) else field_name] = value
        return out
