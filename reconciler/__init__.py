import os as _os

# The spec models use no pydantic plugin; without this, the first model scans every
# installed distribution's entry points for one (a tenth of a second of CLI start-up).
_os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
