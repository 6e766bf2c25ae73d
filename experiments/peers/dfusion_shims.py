"""Runtime shims that let D-Fusion's vendored diffusers 0.24 import next to huggingface_hub 1.x /
transformers 5 / CPU torch. Import this BEFORE putting the D-Fusion checkout on sys.path."""
import huggingface_hub
import huggingface_hub.constants as hub_constants
import transformers.utils

import alignlab._torchvision_compat as tv  # alignlab/__init__ imports only this (no diffusers)

tv.ensure_torchvision_importable()  # transformers' CLIPImageProcessor imports torchvision
if not hasattr(hub_constants, "hf_cache_home"):  # removed in huggingface_hub 1.0
    hub_constants.hf_cache_home = hub_constants.HF_HOME
if not hasattr(huggingface_hub, "cached_download"):  # removed in 0.26
    huggingface_hub.cached_download = huggingface_hub.hf_hub_download
if not hasattr(huggingface_hub, "HfFolder"):  # removed in 1.0

    class HfFolder:
        @staticmethod
        def get_token():
            return huggingface_hub.get_token()

    huggingface_hub.HfFolder = HfFolder
if not hasattr(transformers.utils, "FLAX_WEIGHTS_NAME"):  # removed in transformers 5 (Flax dropped)
    transformers.utils.FLAX_WEIGHTS_NAME = "flax_model.msgpack"
