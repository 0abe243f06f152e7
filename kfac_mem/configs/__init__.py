"""Packaged YAML configs (`mesh/<name>.yaml`, read by `kfac_mem.sharding.load_mesh_config`); no Python API."""

__all__: list[str] = []
