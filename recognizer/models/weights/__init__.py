"""Package data: model weights shipped inside the package (safetensors only), read with importlib.resources."""
