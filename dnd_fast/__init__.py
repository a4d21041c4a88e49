"""dnd_fast: Drag-and-Drop LLMs, fast. Unlabeled prompts in, a PEFT LoRA adapter out."""
from dnd_fast.decoder import DecoderConfig, HyperConvDecoder
from dnd_fast.dispatch import backends
from dnd_fast.encoder import PromptEncoder
from dnd_fast.generator import GeneratedAdapter, Generator, generate, load_generator
from dnd_fast.layout import LoRALayout
from dnd_fast.tokenizer import TokenBatch, detokenize, detokenize_flat, tokenize, tokenize_flat

__version__ = "0.3.0"

__all__ = ["DecoderConfig", "GeneratedAdapter", "Generator", "HyperConvDecoder", "LoRALayout", "PromptEncoder",
           "TokenBatch", "backends", "detokenize", "detokenize_flat", "generate", "load_generator", "tokenize",
           "tokenize_flat", "__version__"]
