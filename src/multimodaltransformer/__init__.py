"""multimodaltransformer: build, train, evaluate and serve multimodal Transformers.

Data flows one way: processor -> encoder -> fusion -> decoder -> generation.
"""

from .hub import convert, load_pretrained
from .models import MultimodalTransformer, MultimodalTransformerModel

__version__ = "0.1.0"
__all__ = ["MultimodalTransformer", "MultimodalTransformerModel", "convert", "load_pretrained", "__version__"]
