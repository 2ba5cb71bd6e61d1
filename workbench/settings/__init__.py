"""Settings: the TOML data the workbench ships, loaded and checked.

Three kinds of file live in the top-level ``profiles/`` folder (installed as data inside the
package as ``workbench/profiles/``):

- ``devices.toml``: the device catalog -> :class:`~workbench.settings.devices.Device`;
- ``architectures/<name>.toml``: shapes of popular open models, for planning without weights
  -> :class:`~workbench.config.DecoderConfig` (with ``Architecture`` for provenance);
- run profiles (``default.toml``, ``ci.toml``, ``long.toml`` or any file given by path) ->
  :class:`~workbench.settings.run_profiles.Profile`.

Every problem is a :class:`~workbench.errors.ProfileError` whose one-line message names the file
and, where it can, the line (``path:line: message``); unknown names suggest the closest known one.
"""

from workbench.errors import ProfileError
from workbench.settings.architectures import (
    Architecture,
    get_architecture,
    get_architecture_profile,
    list_architectures,
)
from workbench.settings.devices import Device, get_device, host_memory_bytes, list_devices
from workbench.settings.run_profiles import Deployment, Profile, list_profiles, load_profile
from workbench.settings.toml import profiles_dir, read_toml

__all__ = [
    "Architecture",
    "Deployment",
    "Device",
    "Profile",
    "ProfileError",
    "get_architecture",
    "get_architecture_profile",
    "get_device",
    "host_memory_bytes",
    "list_architectures",
    "list_devices",
    "list_profiles",
    "load_profile",
    "profiles_dir",
    "read_toml",
]
