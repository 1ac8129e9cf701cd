"""multimodaltransformer: build, train, evaluate and serve multimodal Transformers.

Data flows one way: processor -> encoder -> fusion -> decoder -> generation.
"""

from .models import MultimodalTransformer, MultimodalTransformerModel

__version__ = "0.1.0"
__all__ = ["MultimodalTransformer", "MultimodalTransformerModel", "__version__"]
