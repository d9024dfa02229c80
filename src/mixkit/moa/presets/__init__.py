"""Built-in MoA presets (TOML). A package only so that the files ship in wheels."""
